"""Builds meshd.http2._nghttp2, the cffi (API mode) binding of libnghttp2 that nghttp2.py uses.

The C glue is nghttp2_glue.c beside this file; the declarations below are what Python may call.
setup.py builds it with the hot path when libnghttp2's headers are present (Debian
`libnghttp2-dev`; `make install` installs them); by hand, from the repository root:
`python -m meshd.http2._nghttp2_build` writes the extension beside its sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODULE = "meshd.http2._nghttp2"
HEADER = Path("/usr/include/nghttp2/nghttp2.h")

CDEF = """
typedef struct {
    int64_t *ev;
    size_t nev;
    char *blob;
    size_t blob_len;
    char *out;
    size_t out_len;
    int64_t outbound;
    int64_t inbound;
    int failed;
    int64_t lib_bytes;
    int64_t lib_peak;
    ...;
} mh_conn;

int mh_abi(void);
const char *mh_source(void);
mh_conn *mh_new(int client, const uint32_t *limits);
void mh_free(mh_conn *c);
int mh_start(mh_conn *c);
int mh_pump(mh_conn *c);
long mh_flush(mh_conn *c);
long mh_recv(mh_conn *c, const char *data, size_t len);
int mh_send_headers(mh_conn *c, int32_t sid, const char *blob, size_t len, size_t n,
                    int end_stream);
int mh_send_data(mh_conn *c, int32_t sid, const char *data, size_t len, int end_stream);
int mh_send_trailers(mh_conn *c, int32_t sid, const char *blob, size_t len, size_t n);
size_t mh_buffered(mh_conn *c, int32_t sid);
int mh_reset(mh_conn *c, int32_t sid, uint32_t code);
void mh_consumed(mh_conn *c, int32_t sid, size_t n);
int mh_ping(mh_conn *c, const char *data);
int mh_goaway(mh_conn *c, uint32_t code, int32_t last);
int32_t mh_next_stream_id(mh_conn *c);
int mh_can_open_stream(mh_conn *c);
int mh_set_next_stream_id(mh_conn *c, int32_t id);
int64_t mh_peer_max_concurrent_streams(mh_conn *c);
int64_t mh_own_bytes(mh_conn *c);
const char *nghttp2_strerror(int lib_error_code);
"""


def source_digest() -> str:
    """What the binding is built from (the glue and the declarations), to tell a stale build."""
    import hashlib

    text = (HERE / "nghttp2_glue.c").read_bytes() + CDEF.encode()
    return hashlib.sha256(text).hexdigest()[:16]


def why_not() -> str | None:
    """Why the binding cannot be built here, or None when it can."""
    try:
        import cffi  # noqa: F401
    except ImportError:
        return "no cffi (pip install cffi)"
    if not HEADER.exists():
        return f"no libnghttp2 headers ({HEADER}; apt-get install libnghttp2-dev)"
    return None


def builder() -> Any:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    source = f'#define MH_SOURCE "{source_digest()}"\n' + (HERE / "nghttp2_glue.c").read_text()
    ffi.set_source(MODULE, source, libraries=["nghttp2"],
                   extra_compile_args=["-O2", "-Wall"])
    return ffi


ffibuilder = builder() if why_not() is None else None

if __name__ == "__main__":
    import sys

    reason = why_not()
    if reason is not None:
        sys.exit(f"cannot build {MODULE}: {reason}")
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = Path(builder().compile(tmpdir=tmp, verbose="-v" in sys.argv))
        shutil.copy2(built, HERE / built.name)
        print(HERE / built.name)
