/* meshd's glue around libnghttp2: one HTTP/2 connection driven from Python with few crossings.
 *
 * Python calls one function per codec operation (mh_recv, mh_pump, mh_send_headers, ...). Every
 * nghttp2 callback is C, below: none calls back into Python. What a receive produced is written
 * into two flat buffers that Python reads with one call each (meshd/http2/nghttp2.py decodes
 * them): `ev`, an array of int64 records, and `blob`, the header names and values, GOAWAY debug
 * data and PING payloads, back to back. DATA payloads are not copied here: a record says where
 * the chunk sits in the bytes Python passed to mh_recv, and Python slices it out.
 *
 * Outbound bodies wait in a per-stream buffer owned here; nghttp2 pulls them through a data
 * provider as the peer's windows allow (NGHTTP2_ERR_DEFERRED while the buffer is empty, resumed
 * by the next send). Trailers wait behind the body and go out from the provider at its end.
 *
 * A header block is collected apart (hdr_bytes) and becomes a record only once complete:
 * a block may span several mh_recv calls, and one the library refuses leaves nothing behind.
 *
 * Records (all int64; the decoder in nghttp2.py is the other half of this list):
 *   MH_EV_HEADERS  sid flags npairs length     flags: 1 end_stream, 2 trailers; in blob, `length`
 *                  bytes: name NUL value NUL name NUL value (nghttp2 lets no NUL into a field)
 *   MH_EV_DATA     sid end   offset  length                       offset into mh_recv's input
 *   MH_EV_RESET    sid code  remote
 *   MH_EV_WINDOW   sid
 *   MH_EV_SETTINGS max_concurrent_streams
 *   MH_EV_GOAWAY   last_sid code debug_len                        debug data in blob
 *   MH_EV_PING_ACK                                                8 bytes in blob
 *   MH_EV_ERROR    code reason                                    reason: MH_R_* below
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>

#define MH_ABI 9
#ifndef MH_SOURCE  /* _nghttp2_build.py defines it: a digest of this file and the declarations */
#define MH_SOURCE "unknown"
#endif

enum {
  MH_EV_HEADERS = 1, MH_EV_DATA = 3, MH_EV_RESET = 4, MH_EV_WINDOW = 5,
  MH_EV_SETTINGS = 6, MH_EV_GOAWAY = 7, MH_EV_PING_ACK = 8, MH_EV_ERROR = 9
};

/* connection-error reasons; nghttp2.py maps them onto codec.py's REASONS */
enum {
  MH_R_PROTOCOL = 0, MH_R_FLOW_CONTROL = 1, MH_R_FRAME_SIZE = 2, MH_R_COMPRESSION = 3,
  MH_R_HEADERS_TOO_LARGE = 4, MH_R_FLOOD = 5, MH_R_RAPID_RESET = 6, MH_R_INTERNAL = 7
};

typedef struct mh_stream {
  int32_t id;
  uint8_t *buf;           /* body bytes accepted by send_data, from head to len */
  size_t head, len, cap;
  int end;                /* the caller ended the stream (end_stream or trailers) */
  int provider;           /* a data provider is attached to the stream in nghttp2 */
  int deferred;           /* the provider said NGHTTP2_ERR_DEFERRED: resume on new data */
  int outbound;           /* counted in mh_conn.outbound (a stream this side opened) */
  int reported;           /* the caller knows it is reset (it reset it, or an event said so) */
  nghttp2_nv *trailers;   /* owned copy, sent when the body has gone */
  size_t ntrailers;
} mh_stream;

typedef struct mh_conn {
  /* read by Python (declared in the cdef) */
  int64_t *ev;
  size_t nev;
  char *blob;
  size_t blob_len;
  char *out;
  size_t out_len;
  int64_t outbound;
  int64_t inbound;
  int failed;                     /* a connection error was reported: ignore further input */
  int64_t lib_bytes, lib_peak;    /* what nghttp2 itself holds (its allocator counts), and the most */
  /* private */
  size_t returned_ev, returned_blob; /* what the last mh_recv handed to Python, dropped by the next */
  size_t out_taken;               /* what the last mh_flush handed to Python, dropped by the next */
  size_t ev_cap, blob_cap, out_cap;
  nghttp2_session *session;
  int client;
  uint32_t max_header_list_size;
  uint32_t connection_window;
  size_t hdr_n;                   /* the header block being received: fields so far, */
  uint8_t *hdr_bytes;             /* and name NUL value NUL name NUL value ... */
  size_t hdr_bytes_len, hdr_bytes_cap;
  size_t hdr_size;                /* its decoded size so far (RFC 9113: name + value + 32) */
  size_t last_data;               /* index in ev of the last DATA record, or SIZE_MAX */
  int hdr_pseudo;                 /* it has a pseudo-header (so it is not trailers) */
  const uint8_t *in;              /* mh_recv's input, for DATA offsets */
  size_t in_len;
  int err_reason;                 /* set by a callback that fails the connection */
  uint32_t err_code;
  int local_goaways;              /* GOAWAYs the caller submitted, not yet sent */
  int got_remote_settings;
  int64_t pending_acks, max_pending_acks; /* PING and SETTINGS answered since mh_flush */
  int64_t reset_tokens, reset_burst; /* rapid-reset budget (peer RST_STREAM of its own streams) */
  int32_t *user_resets;           /* RST_STREAMs the caller submitted, not yet sent */
  size_t n_user_resets, cap_user_resets;
  int32_t peer_highest;           /* server: the highest stream id the peer sent HEADERS on */
  int32_t *peer_resets;           /* server: the last MH_PEER_RESETS peer streams closed by a reset, */
  size_t n_peer_resets;           /* a ring (frames on them are ignored, not a connection error) */
  /* open-addressing map stream id -> mh_stream (linear probing, backward-shift deletion) */
  mh_stream **slots;
  size_t nslots, nstreams;
} mh_conn;

/* ---------------------------------------------------------------------------------------- */
/* nghttp2's memory, counted: a size header before each block (tests bound it under attack)  */

#define MH_HDR 16

static void *count_malloc(size_t size, void *u) {
  mh_conn *c = u;
  uint8_t *p = malloc(size + MH_HDR);
  if (!p) return NULL;
  *(size_t *)p = size;
  c->lib_bytes += (int64_t)size;
  if (c->lib_bytes > c->lib_peak) c->lib_peak = c->lib_bytes;
  return p + MH_HDR;
}

static void count_free(void *ptr, void *u) {
  mh_conn *c = u;
  uint8_t *p;
  if (!ptr) return;
  p = (uint8_t *)ptr - MH_HDR;
  c->lib_bytes -= (int64_t) * (size_t *)p;
  free(p);
}

static void *count_calloc(size_t n, size_t size, void *u) {
  void *p;
  if (size && n > SIZE_MAX / size) return NULL;
  p = count_malloc(n * size, u);
  if (p) memset(p, 0, n * size);
  return p;
}

static void *count_realloc(void *ptr, size_t size, void *u) {
  mh_conn *c = u;
  uint8_t *p, *q;
  size_t old;
  if (!ptr) return count_malloc(size, u);
  p = (uint8_t *)ptr - MH_HDR;
  old = *(size_t *)p;
  q = realloc(p, size + MH_HDR);
  if (!q) return NULL;
  *(size_t *)q = size;
  c->lib_bytes += (int64_t)size - (int64_t)old;
  if (c->lib_bytes > c->lib_peak) c->lib_peak = c->lib_bytes;
  return q + MH_HDR;
}

/* ---------------------------------------------------------------------------------------- */
/* growable buffers                                                                          */

static int grow(void **p, size_t *cap, size_t need, size_t unit) {
  size_t n;
  void *q;
  if (need <= *cap) return 0;
  n = *cap ? *cap : 64;
  while (n < need) n *= 2;
  q = realloc(*p, n * unit);
  if (!q) return -1;
  *p = q;
  *cap = n;
  return 0;
}

static int ev_push(mh_conn *c, const int64_t *v, size_t n) {
  if (grow((void **)&c->ev, &c->ev_cap, c->nev + n, sizeof(int64_t))) return -1;
  memcpy(c->ev + c->nev, v, n * sizeof(int64_t));
  c->nev += n;
  return 0;
}

static int blob_push(mh_conn *c, const uint8_t *p, size_t n) {
  if (!n) return 0;
  if (grow((void **)&c->blob, &c->blob_cap, c->blob_len + n, 1)) return -1;
  memcpy(c->blob + c->blob_len, p, n);
  c->blob_len += n;
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the stream map                                                                            */

static size_t slot_of(mh_conn *c, int32_t id) {
  return ((uint32_t)id * 2654435761u) & (c->nslots - 1);
}

static mh_stream *find(mh_conn *c, int32_t id) {
  size_t i;
  if (!c->nstreams) return NULL;
  for (i = slot_of(c, id); c->slots[i]; i = (i + 1) & (c->nslots - 1))
    if (c->slots[i]->id == id) return c->slots[i];
  return NULL;
}

static int insert(mh_conn *c, mh_stream *st) {
  size_t i;
  if ((c->nstreams + 1) * 2 > c->nslots) {
    size_t old = c->nslots, j;
    mh_stream **prev = c->slots;
    size_t n = old ? old * 2 : 16;
    c->slots = calloc(n, sizeof(mh_stream *));
    if (!c->slots) { c->slots = prev; return -1; }
    c->nslots = n;
    for (j = 0; j < old; j++) {
      if (!prev[j]) continue;
      for (i = slot_of(c, prev[j]->id); c->slots[i]; i = (i + 1) & (n - 1)) {}
      c->slots[i] = prev[j];
    }
    free(prev);
  }
  for (i = slot_of(c, st->id); c->slots[i]; i = (i + 1) & (c->nslots - 1)) {}
  c->slots[i] = st;
  c->nstreams++;
  return 0;
}

static void free_trailers(mh_stream *st) {
  size_t i;
  for (i = 0; i < st->ntrailers; i++) free(st->trailers[i].name);  /* name and value: one block */
  free(st->trailers);
  st->trailers = NULL;
  st->ntrailers = 0;
}

static void drop(mh_conn *c, int32_t id) {
  size_t i, j, k, mask = c->nslots - 1;
  mh_stream *st;
  if (!c->nstreams) return;
  for (i = slot_of(c, id); c->slots[i]; i = (i + 1) & mask)
    if (c->slots[i]->id == id) break;
  if (!c->slots[i]) return;
  st = c->slots[i];
  c->slots[i] = NULL;
  c->nstreams--;
  /* backward-shift: move later members of the run into the hole when their home allows */
  for (j = (i + 1) & mask; c->slots[j]; j = (j + 1) & mask) {
    k = slot_of(c, c->slots[j]->id);
    if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
      c->slots[i] = c->slots[j];
      c->slots[j] = NULL;
      i = j;
    }
  }
  if (st->outbound) c->outbound--;
  free(st->buf);
  free_trailers(st);
  free(st);
}

static mh_stream *stream_new(mh_conn *c, int32_t id) {
  mh_stream *st = calloc(1, sizeof(mh_stream));
  if (!st) return NULL;
  st->id = id;
  if (insert(c, st)) { free(st); return NULL; }
  return st;
}

/* ---------------------------------------------------------------------------------------- */
/* callbacks                                                                                 */

static void fail(mh_conn *c, uint32_t code, int reason) {
  if (!c->err_reason) { c->err_reason = reason + 1; c->err_code = code; }
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *u) {
  mh_conn *c = u;
  (void)s;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST && !c->client)
    c->inbound++;
  c->hdr_n = 0;
  c->hdr_bytes_len = 0;
  c->hdr_size = 0;
  c->hdr_pseudo = 0;
  return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *u) {
  mh_conn *c = u;
  (void)s; (void)flags; (void)f;
  c->hdr_size += nlen + vlen + 32;
  if (c->hdr_size > c->max_header_list_size) {
    /* an HPACK bomb, or just too big: a connection error, as h2 does; nothing more is kept */
    fail(c, NGHTTP2_ENHANCE_YOUR_CALM, MH_R_HEADERS_TOO_LARGE);
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  if (nlen && name[0] == ':') c->hdr_pseudo = 1;
  /* nghttp2 has checked the field (RFC 9113 8.2.1): no NUL in it, so NUL can separate them */
  if (memchr(name, 0, nlen) || memchr(value, 0, vlen)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (grow((void **)&c->hdr_bytes, &c->hdr_bytes_cap, c->hdr_bytes_len + nlen + vlen + 2, 1))
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (c->hdr_n) c->hdr_bytes[c->hdr_bytes_len++] = 0;
  memcpy(c->hdr_bytes + c->hdr_bytes_len, name, nlen);
  c->hdr_bytes[c->hdr_bytes_len + nlen] = 0;
  memcpy(c->hdr_bytes + c->hdr_bytes_len + nlen + 1, value, vlen);
  c->hdr_bytes_len += nlen + vlen + 1;
  c->hdr_n++;
  return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *u) {
  mh_conn *c = u;
  int64_t rec[5] = {MH_EV_DATA, sid, 0, 0, (int64_t)len};
  (void)s; (void)flags;
  if (data >= c->in && data + len <= c->in + c->in_len) {
    rec[3] = data - c->in;
  } else {  /* not expected: nghttp2 hands out pointers into the input; copy to be safe */
    rec[3] = -1 - (int64_t)c->blob_len;
    if (blob_push(c, data, len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  c->last_data = c->nev;
  return ev_push(c, rec, 5) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* Stream id reuse (RFC 9113 5.1.1): a HEADERS that would open a stream at or below the highest id
   the peer has used, for a stream that is not open, is a connection error PROTOCOL_ERROR, as h2
   has it. nghttp2 (keeping no closed streams) would ignore the block, so a client could go back
   to ids it skipped or used. The exception, also h2's: a stream closed by RST_STREAM, on which the
   peer may have sent before it learnt of the reset (RFC 9113 5.1 "closed"): its frames are
   ignored. The last MH_PEER_RESETS such streams (RST_STREAM sent or received, any code) are
   remembered. */
#define MH_PEER_RESETS 128

static void remember_peer_reset(mh_conn *c, int32_t sid) {
  if (c->client || !(sid & 1)) return;  /* server side, streams the peer opened */
  if (!c->peer_resets) {
    c->peer_resets = malloc(MH_PEER_RESETS * sizeof(int32_t));
    if (!c->peer_resets) return;  /* then a late frame on it is a connection error: harmless */
  }
  c->peer_resets[c->n_peer_resets++ % MH_PEER_RESETS] = sid;
}

static int was_reset(mh_conn *c, int32_t sid) {
  size_t i, n = c->n_peer_resets < MH_PEER_RESETS ? c->n_peer_resets : MH_PEER_RESETS;
  for (i = 0; i < n; i++)
    if (c->peer_resets[i] == sid) return 1;
  return 0;
}

static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *u) {
  mh_conn *c = u;
  int32_t sid = hd->stream_id;
  if (hd->type != NGHTTP2_HEADERS || c->client || !(sid & 1)) return 0;
  if (sid > c->peer_highest) {
    c->peer_highest = sid;
    return 0;
  }
  if (nghttp2_session_find_stream(s, sid) || was_reset(c, sid)) return 0;
  fail(c, NGHTTP2_PROTOCOL_ERROR, MH_R_PROTOCOL);
  return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static void refund_reset_token(mh_conn *c) {
  if (c->reset_tokens < c->reset_burst) c->reset_tokens++;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *u) {
  mh_conn *c = u;
  int32_t sid = f->hd.stream_id;
  int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  switch (f->hd.type) {
  case NGHTTP2_HEADERS: {
    int trailers = f->headers.cat == NGHTTP2_HCAT_HEADERS && !c->hdr_pseudo;
    int64_t rec[5] = {MH_EV_HEADERS, sid, (end ? 1 : 0) | (trailers ? 2 : 0), (int64_t)c->hdr_n,
                      (int64_t)c->hdr_bytes_len};
    if (ev_push(c, rec, 5) || blob_push(c, c->hdr_bytes, c->hdr_bytes_len))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    c->hdr_n = c->hdr_bytes_len = 0;
    return 0;
  }
  case NGHTTP2_DATA: {
    int64_t rec[5] = {MH_EV_DATA, sid, 1, 0, 0};
    if (!end) return 0;
    /* the last chunk of this frame, if it came in this call, carries the end */
    if (c->last_data != SIZE_MAX && c->last_data + 5 == c->nev && c->ev[c->last_data + 1] == sid) {
      c->ev[c->last_data + 2] = 1;
      return 0;
    }
    return ev_push(c, rec, 5) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  }
  case NGHTTP2_RST_STREAM: {
    int64_t rec[4] = {MH_EV_RESET, sid, f->rst_stream.error_code, 1};
    if ((sid & 1) == (c->client ? 0 : 1) && c->reset_burst > 0) {
      /* the peer cancelled a stream it opened: rapid reset costs a token (refunded by streams
         that complete), and past the budget the connection goes */
      if (--c->reset_tokens < 0) {
        fail(c, NGHTTP2_ENHANCE_YOUR_CALM, MH_R_RAPID_RESET);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
    }
    remember_peer_reset(c, sid);
    drop(c, sid);
    return ev_push(c, rec, 4) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  }
  case NGHTTP2_WINDOW_UPDATE: {
    int64_t rec[2] = {MH_EV_WINDOW, sid};
    return ev_push(c, rec, 2) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  }
  case NGHTTP2_SETTINGS: {
    int64_t rec[2] = {MH_EV_SETTINGS, 0};
    uint32_t m;
    if (f->hd.flags & NGHTTP2_FLAG_ACK) return 0;
    if (++c->pending_acks > c->max_pending_acks) {
      fail(c, NGHTTP2_ENHANCE_YOUR_CALM, MH_R_FLOOD);
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    c->got_remote_settings = 1;
    m = nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    rec[1] = m > 0x7fffffffu ? 0x7fffffff : m;
    return ev_push(c, rec, 2) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  }
  case NGHTTP2_GOAWAY: {
    int64_t rec[4] = {MH_EV_GOAWAY, f->goaway.last_stream_id, f->goaway.error_code,
                      (int64_t)f->goaway.opaque_data_len};
    if (ev_push(c, rec, 4) || blob_push(c, f->goaway.opaque_data, f->goaway.opaque_data_len))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
  }
  case NGHTTP2_PING: {
    int64_t rec[1] = {MH_EV_PING_ACK};
    if (!(f->hd.flags & NGHTTP2_FLAG_ACK)) {
      if (++c->pending_acks > c->max_pending_acks) {
        fail(c, NGHTTP2_ENHANCE_YOUR_CALM, MH_R_FLOOD);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      return 0;
    }
    if (ev_push(c, rec, 1) || blob_push(c, f->ping.opaque_data, 8)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
  }
  default:
    return 0;
  }
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *u) {
  mh_conn *c = u;
  mh_stream *st = find(c, sid);
  (void)s;
  if (st && st->outbound && !st->reported && code != NGHTTP2_NO_ERROR) {
    /* closed by the library itself: above the last stream id of the peer's GOAWAY (refused) */
    int64_t rec[4] = {MH_EV_RESET, sid, code, 0};
    st->reported = 1;
    if (ev_push(c, rec, 4)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  if ((sid & 1) == (c->client ? 0 : 1)) {  /* a stream the peer opened */
    if (c->inbound > 0) c->inbound--;
    if (code == NGHTTP2_NO_ERROR) refund_reset_token(c);
  }
  drop(c, sid);
  return 0;
}

static int user_reset_taken(mh_conn *c, int32_t sid) {
  size_t i;
  for (i = 0; i < c->n_user_resets; i++) {
    if (c->user_resets[i] == sid) {
      c->user_resets[i] = c->user_resets[--c->n_user_resets];
      return 1;
    }
  }
  return 0;
}

static int reason_of_code(uint32_t code) {
  switch (code) {
  case NGHTTP2_FLOW_CONTROL_ERROR: return MH_R_FLOW_CONTROL;
  case NGHTTP2_FRAME_SIZE_ERROR: return MH_R_FRAME_SIZE;
  case NGHTTP2_COMPRESSION_ERROR: return MH_R_COMPRESSION;
  case NGHTTP2_ENHANCE_YOUR_CALM: return MH_R_FLOOD;
  case NGHTTP2_INTERNAL_ERROR: return MH_R_INTERNAL;
  default: return MH_R_PROTOCOL;
  }
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *u) {
  mh_conn *c = u;
  (void)s;
  if (f->hd.type == NGHTTP2_RST_STREAM) {
    remember_peer_reset(c, f->hd.stream_id);  /* any code: RST_STREAM(NO_ERROR) ends an upload early */
    /* a reset nghttp2 sent by itself (a stream error by the peer) is news to the caller */
    if (!user_reset_taken(c, f->hd.stream_id)) {
      int64_t rec[4] = {MH_EV_RESET, f->hd.stream_id, f->rst_stream.error_code, 0};
      mh_stream *st = find(c, f->hd.stream_id);
      if (st) st->reported = 1;
      if (ev_push(c, rec, 4)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  } else if (f->hd.type == NGHTTP2_GOAWAY) {
    if (c->local_goaways > 0) {
      c->local_goaways--;
    } else if (f->goaway.error_code != NGHTTP2_NO_ERROR && !c->failed) {
      /* nghttp2 found a connection error in what the peer sent */
      int64_t rec[3] = {MH_EV_ERROR, f->goaway.error_code, reason_of_code(f->goaway.error_code)};
      if (c->err_reason) rec[2] = c->err_reason - 1;
      c->failed = 1;
      if (ev_push(c, rec, 3)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  }
  return 0;
}

static int on_frame_not_send(nghttp2_session *s, const nghttp2_frame *f, int lib_error, void *u) {
  mh_conn *c = u;
  (void)s; (void)lib_error;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
    /* a request that never left (the peer sent GOAWAY, or no ids are left): refused, so the
       caller may retry it elsewhere */
    int64_t rec[4] = {MH_EV_RESET, f->hd.stream_id, NGHTTP2_REFUSED_STREAM, 0};
    drop(c, f->hd.stream_id);
    if (ev_push(c, rec, 4)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  } else if (f->hd.type == NGHTTP2_RST_STREAM) {
    user_reset_taken(c, f->hd.stream_id);
  }
  return 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *u) {
  mh_conn *c = u;
  mh_stream *st = find(c, sid);
  size_t n;
  (void)source;
  if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  n = st->len - st->head;
  if (n > length) n = length;
  memcpy(buf, st->buf + st->head, n);
  st->head += n;
  if (st->head == st->len) st->head = st->len = 0;
  if (st->len == 0 && st->end) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    st->provider = 0;
    if (st->trailers) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      if (nghttp2_submit_trailer(s, sid, st->trailers, st->ntrailers)) {
        free_trailers(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      }
      free_trailers(st);
    }
  } else if (n == 0) {
    st->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)n;
}

/* ---------------------------------------------------------------------------------------- */
/* the API Python calls                                                                      */

int mh_can_open_stream(mh_conn *c);
int64_t mh_peer_max_concurrent_streams(mh_conn *c);

int mh_abi(void) { return MH_ABI; }
const char *mh_source(void) { return MH_SOURCE; }

/* limits: max_concurrent_streams, initial_window_size, max_frame_size, max_header_list_size,
   header_table_size, connection_window_size, reset_budget, max_pending_acks, max_settings
   (entries in one SETTINGS frame), max_continuations (CONTINUATION frames in one header block) */
mh_conn *mh_new(int client, const uint32_t *limits) {
  mh_conn *c = calloc(1, sizeof(mh_conn));
  nghttp2_session_callbacks *cb;
  nghttp2_option *opt;
  int rv;
  if (!c) return NULL;
  c->client = client;
  c->last_data = SIZE_MAX;
  c->max_header_list_size = limits[3];
  c->connection_window = limits[5];
  c->reset_burst = c->reset_tokens = limits[6];
  c->max_pending_acks = limits[7];
  if (nghttp2_session_callbacks_new(&cb)) { free(c); return NULL; }
  nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
  if (nghttp2_option_new(&opt)) { nghttp2_session_callbacks_del(cb); free(c); return NULL; }
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_no_closed_streams(opt, 1);
  nghttp2_option_set_max_outbound_ack(opt, limits[7] + 1);  /* ours (pending_acks) goes first */
  nghttp2_option_set_max_settings(opt, limits[8]);
  nghttp2_option_set_max_continuations(opt, limits[9]);
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
  /* rapid reset: the budget above (reset_budget) decides, alike in both backends; nghttp2's own
     token bucket (1000, then 33 a second by its clock) would also end a busy benign connection */
  nghttp2_option_set_stream_reset_rate_limit(opt, UINT64_MAX / 2, UINT64_MAX / 2);
  {
    nghttp2_mem mem = {c, count_malloc, count_free, count_calloc, count_realloc};
    rv = client ? nghttp2_session_client_new3(&c->session, cb, c, opt, &mem)
                : nghttp2_session_server_new3(&c->session, cb, c, opt, &mem);
  }
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  if (rv) { free(c); return NULL; }
  {
    nghttp2_settings_entry iv[6] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits[0]},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits[1]},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, limits[2]},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits[3]},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, limits[4]},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    /* a server does not send ENABLE_PUSH (RFC 9113 6.5.2: only a client may) */
    rv = nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, client ? 6 : 5);
  }
  if (rv) { nghttp2_session_del(c->session); free(c); return NULL; }
  return c;
}

void mh_free(mh_conn *c) {
  size_t i;
  if (!c) return;
  nghttp2_session_del(c->session);  /* no callbacks from here on */
  for (i = 0; i < c->nslots; i++) {
    mh_stream *st = c->slots[i];
    if (!st) continue;
    free(st->buf);
    free_trailers(st);
    free(st);
  }
  free(c->slots);
  free(c->ev);
  free(c->blob);
  free(c->out);
  free(c->user_resets);
  free(c->peer_resets);
  free(c->hdr_bytes);
  free(c);
}

/* Serialize whatever nghttp2 wants to send into c->out. */
int mh_pump(mh_conn *c) {
  for (;;) {
    const uint8_t *p;
    ssize_t n = nghttp2_session_mem_send(c->session, &p);
    if (n < 0) return (int)n;
    if (n == 0) return 0;
    if (grow((void **)&c->out, &c->out_cap, c->out_len + (size_t)n, 1)) return NGHTTP2_ERR_NOMEM;
    memcpy(c->out + c->out_len, p, (size_t)n);
    c->out_len += (size_t)n;
  }
}

int mh_start(mh_conn *c) {
  int rv = 0;
  if (c->connection_window > 65535)
    rv = nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
                                               (int32_t)c->connection_window);
  return rv ? rv : mh_pump(c);
}

/* Forget the records the last mh_recv returned (Python has decoded them), keeping any made since
   by mh_pump (resets nghttp2 sent, refused requests) for the next; give memory back after a burst. */
static void clear_returned(mh_conn *c) {
  c->last_data = SIZE_MAX;
  if (!c->returned_ev && !c->returned_blob) return;
  memmove(c->ev, c->ev + c->returned_ev, (c->nev - c->returned_ev) * sizeof(int64_t));
  c->nev -= c->returned_ev;
  memmove(c->blob, c->blob + c->returned_blob, c->blob_len - c->returned_blob);
  c->blob_len -= c->returned_blob;
  c->returned_ev = c->returned_blob = 0;
  if (!c->nev && c->ev_cap > 65536) { free(c->ev); c->ev = NULL; c->ev_cap = 0; }
  if (!c->blob_len && c->blob_cap > 262144) { free(c->blob); c->blob = NULL; c->blob_cap = 0; }
}

/* The output handed to Python by the last mh_flush is gone; serialize what is queued now.
   Returns the number of bytes at c->out. */
long mh_flush(mh_conn *c) {
  int rv;
  if (c->out_taken) {
    memmove(c->out, c->out + c->out_taken, c->out_len - c->out_taken);
    c->out_len -= c->out_taken;
    c->out_taken = 0;
  }
  if (!c->out_len && c->out_cap > 1048576) { free(c->out); c->out = NULL; c->out_cap = 0; }
  c->pending_acks = 0;
  rv = mh_pump(c);
  if (rv < 0) return rv;
  c->out_taken = c->out_len;
  return (long)c->out_len;
}

static void report_fatal(mh_conn *c, int rv) {
  uint32_t code = NGHTTP2_PROTOCOL_ERROR;
  int reason = MH_R_PROTOCOL;
  int64_t rec[3];
  if (c->failed) {  /* already reported (nghttp2's own GOAWAY went out first) */
    mh_pump(c);
    return;
  }
  if (c->err_reason) {
    code = c->err_code;
    reason = c->err_reason - 1;
  } else if (rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) {
    code = NGHTTP2_ENHANCE_YOUR_CALM;
    reason = MH_R_FLOOD;
  } else if (rv == NGHTTP2_ERR_NOMEM || rv == NGHTTP2_ERR_CALLBACK_FAILURE) {
    code = NGHTTP2_INTERNAL_ERROR;
    reason = MH_R_INTERNAL;
  }
  c->failed = 1;
  rec[0] = MH_EV_ERROR;
  rec[1] = code;
  rec[2] = reason;
  ev_push(c, rec, 3);
  nghttp2_session_terminate_session(c->session, code);
  mh_pump(c);
}

/* Feed received bytes; returns the number of int64 records in c->ev (c->blob beside them). */
long mh_recv(mh_conn *c, const char *input, size_t len) {
  const uint8_t *data = (const uint8_t *)input;
  ssize_t rv;
  clear_returned(c);
  if (c->failed) {
    c->returned_ev = c->nev;
    c->returned_blob = c->blob_len;
    return (long)c->nev;
  }
  c->in = data;
  c->in_len = len;
  rv = nghttp2_session_mem_recv(c->session, data, len);
  c->in = NULL;
  c->in_len = 0;
  if (rv < 0) {
    report_fatal(c, (int)rv);
  } else {
    int prv = mh_pump(c);  /* acks, window updates, and any GOAWAY nghttp2 queued */
    if (prv < 0 && !c->failed) report_fatal(c, prv);
  }
  c->returned_ev = c->nev;
  c->returned_blob = c->blob_len;
  return (long)c->nev;
}

/* Headers arrive as one block: names and values joined by NUL bytes (RFC 9113 8.2.1 forbids NUL
   in both, so it cannot occur inside one), which costs Python one join instead of a list of
   lengths. The nghttp2_nv point into the block; nghttp2 copies them when the frame is submitted.
   NULL when the block does not hold n pairs (a NUL inside a field) or on no memory. */
static nghttp2_nv *make_nva(const uint8_t *blob, size_t len, size_t n, nghttp2_nv *stack) {
  nghttp2_nv *nva = n <= 32 ? stack : malloc((n ? n : 1) * sizeof(nghttp2_nv));
  const uint8_t *p = blob, *end = blob + len, *q;
  size_t i;
  if (!nva) return NULL;
  for (i = 0; i < 2 * n; i++) {
    q = memchr(p, 0, (size_t)(end - p));
    if (!q) q = end;
    if ((i == 2 * n - 1) != (q == end)) { if (nva != stack) free(nva); return NULL; }
    if (i & 1) { nva[i / 2].value = (uint8_t *)p; nva[i / 2].valuelen = (size_t)(q - p); }
    else { nva[i / 2].name = (uint8_t *)p; nva[i / 2].namelen = (size_t)(q - p); }
    nva[i / 2].flags = NGHTTP2_NV_FLAG_NONE;
    p = q + 1;
  }
  return nva;
}

/* Returns 0, or a negative nghttp2 error (the stream is gone, the id is wrong, ...). */
int mh_send_headers(mh_conn *c, int32_t sid, const char *blob, size_t len, size_t n,
                    int end_stream) {
  nghttp2_nv stack[32];
  nghttp2_nv *nva = make_nva((const uint8_t *)blob, len, n, stack);
  nghttp2_data_provider prd;
  mh_stream *st;
  int rv;
  int informational;
  if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
  informational = n > 0 && nva[0].namelen == 7 && memcmp(nva[0].name, ":status", 7) == 0 &&
                  nva[0].valuelen > 0 && nva[0].value[0] == '1';
  prd.source.ptr = NULL;
  prd.read_callback = read_body;
  if (c->client && !find(c, sid)) {
    int32_t got;
    if (!mh_can_open_stream(c)) {  /* GOAWAY either way, ids used up, or failed */
      rv = NGHTTP2_ERR_START_STREAM_NOT_ALLOWED;
      goto out;
    }
    if (sid != (int32_t)nghttp2_session_get_next_stream_id(c->session)) {
      rv = NGHTTP2_ERR_INVALID_ARGUMENT;
      goto out;
    }
    if (c->outbound >= mh_peer_max_concurrent_streams(c)) {  /* as h2 does; nghttp2 would queue it */
      rv = NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE;
      goto out;
    }
    st = stream_new(c, sid);
    if (!st) { rv = NGHTTP2_ERR_NOMEM; goto out; }
    st->outbound = 1;
    c->outbound++;
    st->provider = !end_stream;
    st->end = end_stream;
    got = nghttp2_submit_request(c->session, NULL, nva, n, end_stream ? NULL : &prd, NULL);
    if (got < 0) { drop(c, sid); rv = got; goto out; }
    rv = 0;
  } else if (informational || c->client) {
    rv = nghttp2_submit_headers(c->session, end_stream ? NGHTTP2_FLAG_END_STREAM : 0, sid, NULL,
                                nva, n, NULL);
  } else {
    st = find(c, sid);
    if (!st && !nghttp2_session_find_stream(c->session, sid)) { rv = NGHTTP2_ERR_STREAM_CLOSED; goto out; }
    if (!st) st = stream_new(c, sid);
    if (!st) { rv = NGHTTP2_ERR_NOMEM; goto out; }
    st->provider = !end_stream;
    st->end = end_stream;
    rv = nghttp2_submit_response(c->session, sid, nva, n, end_stream ? NULL : &prd);
  }
out:
  if (nva != stack) free(nva);
  return rv;
}

static void resume(mh_conn *c, mh_stream *st) {
  if (st->deferred) {
    st->deferred = 0;
    nghttp2_session_resume_data(c->session, st->id);
  }
}

int mh_send_data(mh_conn *c, int32_t sid, const char *data, size_t len, int end_stream) {
  mh_stream *st = find(c, sid);
  if (!st || !st->provider || st->end) return NGHTTP2_ERR_STREAM_CLOSED;
  if (len) {
    if (st->head && st->len + len > st->cap) {  /* compact before growing */
      memmove(st->buf, st->buf + st->head, st->len - st->head);
      st->len -= st->head;
      st->head = 0;
    }
    if (grow((void **)&st->buf, &st->cap, st->len + len, 1)) return NGHTTP2_ERR_NOMEM;
    memcpy(st->buf + st->len, data, len);
    st->len += len;
  }
  if (end_stream) st->end = 1;
  resume(c, st);
  return 0;
}

int mh_send_trailers(mh_conn *c, int32_t sid, const char *blob, size_t len, size_t n) {
  mh_stream *st = find(c, sid);
  nghttp2_nv stack[32];
  nghttp2_nv *nva;
  size_t i;
  if (!st || !st->provider || st->end) return NGHTTP2_ERR_STREAM_CLOSED;
  nva = make_nva((const uint8_t *)blob, len, n, stack);
  if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
  st->trailers = calloc(n ? n : 1, sizeof(nghttp2_nv));
  if (!st->trailers) { if (nva != stack) free(nva); return NGHTTP2_ERR_NOMEM; }
  for (i = 0; i < n; i++) {  /* kept until the body has gone: a copy of each field */
    size_t nl = nva[i].namelen, vl = nva[i].valuelen;
    uint8_t *mem = malloc(nl + vl + 1);
    if (!mem) { st->ntrailers = i; free_trailers(st); if (nva != stack) free(nva); return NGHTTP2_ERR_NOMEM; }
    memcpy(mem, nva[i].name, nl);
    memcpy(mem + nl, nva[i].value, vl);
    st->trailers[i] = nva[i];
    st->trailers[i].name = mem;
    st->trailers[i].value = mem + nl;
  }
  if (nva != stack) free(nva);
  st->ntrailers = n;
  st->end = 1;
  resume(c, st);
  return 0;
}

size_t mh_buffered(mh_conn *c, int32_t sid) {
  mh_stream *st = find(c, sid);
  return st ? st->len - st->head : 0;
}

int mh_reset(mh_conn *c, int32_t sid, uint32_t code) {
  mh_stream *st = find(c, sid);
  if (st) {  /* its body goes; the stream itself stays counted until nghttp2 closes it */
    st->reported = 1;
    st->head = st->len = 0;
    st->end = 1;
    free_trailers(st);
  }
  if (!nghttp2_session_find_stream(c->session, sid)) {
    if (st && st->outbound) drop(c, sid);
    return 0;
  }
  if (c->n_user_resets >= 4096) {  /* resets nghttp2 never sent (the stream was closing): forget the oldest */
    memmove(c->user_resets, c->user_resets + 2048, (c->n_user_resets - 2048) * sizeof(int32_t));
    c->n_user_resets -= 2048;
  }
  if (grow((void **)&c->user_resets, &c->cap_user_resets, c->n_user_resets + 1, sizeof(int32_t)))
    return NGHTTP2_ERR_NOMEM;
  c->user_resets[c->n_user_resets++] = sid;
  return nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, sid, code);
}

void mh_consumed(mh_conn *c, int32_t sid, size_t n) {
  if (nghttp2_session_consume(c->session, sid, n))
    nghttp2_session_consume_connection(c->session, n);
}

int mh_ping(mh_conn *c, const char *data) {
  return nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, (const uint8_t *)data);
}

int mh_goaway(mh_conn *c, uint32_t code, int32_t last) {
  int rv;
  if (last < 0) last = nghttp2_session_get_last_proc_stream_id(c->session);
  rv = nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, last, code, NULL, 0);
  if (!rv) c->local_goaways++;
  return rv;
}

int32_t mh_next_stream_id(mh_conn *c) {
  uint32_t id = nghttp2_session_get_next_stream_id(c->session);
  return id > 0x7fffffffu ? -1 : (int32_t)id;
}

int mh_can_open_stream(mh_conn *c) {
  return !c->failed && nghttp2_session_get_next_stream_id(c->session) <= 0x7fffffffu &&
         nghttp2_session_check_request_allowed(c->session);
}

int mh_set_next_stream_id(mh_conn *c, int32_t id) {
  return nghttp2_session_set_next_stream_id(c->session, id);
}

/* Bytes the connection holds outside nghttp2: record, output and header buffers, stream bodies. */
int64_t mh_own_bytes(mh_conn *c) {
  size_t i, n = c->ev_cap * sizeof(int64_t) + c->blob_cap + c->out_cap + c->hdr_bytes_cap +
                c->nslots * sizeof(mh_stream *) + c->cap_user_resets * sizeof(int32_t) +
                (c->peer_resets ? MH_PEER_RESETS * sizeof(int32_t) : 0);
  for (i = 0; i < c->nslots; i++)
    if (c->slots[i]) n += sizeof(mh_stream) + c->slots[i]->cap;
  return (int64_t)n;
}

int64_t mh_peer_max_concurrent_streams(mh_conn *c) {
  uint32_t m;
  if (!c->got_remote_settings) return 0x7fffffff;
  m = nghttp2_session_get_remote_settings(c->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return m > 0x7fffffffu ? 0x7fffffff : m;
}
