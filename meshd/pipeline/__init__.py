"""The request pipeline: small stages composed in one order (see assemble.py for the order and why).

Two objects travel down the path. The wire `Request` (meshd/http/messages.py: method, target,
headers, `l5d-*` headers, body) is built by the HTTP/1 codec and is what the upstream
connection writes. The `RouteContext` (context.py) is made by the listener when it runs the
request; it holds the wire request and what the pipeline learns on the way (request id, local
dtab, logical name, chooser, classifier, deadline, attempts, the last node tried). Stages,
filters and the client take the context; the pool and the connection take the wire request.

The path of one request, in the order its code runs (a test imports each module:function
named here, so the list follows the code). Stages are closures built once per router or per
logical name by `Stack.build` (stack.py); the function named is the one that builds the step,
and the closure it returns is named after the arrow.

1. `meshd.listener:ServerProtocol.data_received` - bytes from the client's socket go to the
   HTTP/1 codec, `meshd.http.codec:RequestCodec.feed` (llhttp underneath), which returns events.
2. `meshd.listener:ServerProtocol._on_request` - a complete head (the codec built the wire
   `Request` in `RequestCodec.on_headers_complete`): its `Body` is fed from later events as
   bytes arrive, and the request is queued.
3. `meshd.listener:ServerProtocol._enqueue` - answered in order: the request runs now, or waits
   behind the ones before it on this connection.
4. `meshd.listener:ServerProtocol._start` - hands the request to the connection's task
   (`meshd.listener:ServerProtocol._wake`), unless the fast path takes it (below).
5. `meshd.listener:ServerProtocol._serve` - the connection's task makes the `RouteContext` and
   awaits the router's service with it; stats and the error responder (a `MeshdError` becomes a
   response with `l5d-err`) are here, not stages.
6. `meshd.pipeline.stack:_filtered` -> `two` - the router-level filters, run in one plain
   function (no coroutine frame): the next two steps. With tracing on (`tracing.collector`),
   `meshd.pipeline.tracing:trace_filter` -> `trace` runs first (in `many`): it reads the trace
   context, decides sampling, and sets `ctx.trace_id` and, when sampled, `ctx.span`.
7. `meshd.pipeline.hygiene:hygiene_filter` -> `clean` - trusts or strips `l5d-*`; sets
   `ctx.local_dtab` and `ctx.reqid`; adds `l5d-reqid`, `Via`, `X-Forwarded-For`.
8. `meshd.pipeline.identify:identify_filter` -> `identify` - the identifier reads the wire
   request; sets `ctx.logical_path` and `ctx.logical_name`.
9. `meshd.pipeline.bind:bind_service` -> `bind_request` - sets `ctx.chooser` from the binding
   cache (or `Binder.bind`, which delegates through the dtab), then calls the next step. When
   the routing file has rules with `match:`, `fault:` or `mirror:` (one attribute test
   otherwise), `with_rules` first applies a fault (abort, or `delayed`), hands the request to
   `meshd.pipeline.mirror:Mirroring.copy` (which starts its copies as tasks of their own), and
   `matched` adds the dentries of the match rules that hold to the binding key.
10. `meshd.router:Router.service_for` - the logical name's service chain, built on its first
    request by `Router._new_service` from `assemble.service_stack`.
11. `meshd.pipeline.access_log:AccessLog.stage` -> `log_request` - only with `accessLog: true`.
12. `meshd.pipeline.assemble:classify_filter` -> `classify` - sets `ctx.classifier`.
13. `meshd.pipeline.timeouts:timeout_stage` -> `bound` - sets `ctx.deadline`, bounds the rest;
    without a total timeout or a caller's deadline it is a plain tail call.
14. `meshd.pipeline.retries:retries_stage` -> `retry` - counts `ctx.attempts`, classifies each
    attempt's outcome, backs off and calls the next step again while a retry is allowed.
15. `meshd.router:Router._dispatch_choice` - `ctx.chooser` picks this attempt's bound name;
    its `Client` is called (created on first use by `Router.client_for`).
16. `meshd.client:Client.__call__` - the balancer picks a node (avoiding `ctx.last_node`),
    counts it started, serialises the head, and sends the wire request; the attempt timeout
    (when set) bounds this step. A sampled request's attempt gets a child span here, whose id
    goes upstream in `traceparent`.
17. `meshd.pipeline.dispatch:request_head` - the head for this attempt, with `l5d-dst-*`.
18. `meshd.pool.pool:Pool.try_acquire_idle` - a warm keep-alive connection, the common case;
    otherwise `meshd.pipeline.dispatch:dispatch` waits for one from `Pool.acquire`.
19. `meshd.pool.connection:UpstreamConnection.send` - writes the head and attaches the body; the
    returned future resolves with the response head, its body streaming behind it.

The fast path (meshd/fastpath.py, on unless `MESHD_FAST_PATH=0`) serves the common HTTP/1.1
request with the same decisions as plain calls, with no task, future or coroutine: at step 4,
`meshd.listener:ServerProtocol._run` offers a request whose body has arrived whole to
`meshd.fastpath:FastPath.plan`, which runs steps 6-9 (the same filter closures and the binding
cache), 12, 15 (`meshd.router:Router.fast_client`) and 16-19 itself (`meshd.client:Client.pick`,
`meshd.client:Client.begin`, `meshd.pool.pool:Pool.try_acquire_idle`, and
`meshd.pool.connection:UpstreamConnection.send_to`, which takes a receiver instead of returning a
future). The upstream connection calls `meshd.fastpath:FastExchange.head_received` once the
response's read is parsed: `meshd.client:Client.settle` counts the attempt, and
`meshd.listener:ServerProtocol.fast_done` records and writes the response. Whatever it cannot
finish goes to the connection's task through `meshd.listener:ServerProtocol.hand_over`, which
awaits `meshd.fastpath:FastExchange.resume`: the slow path from the step where the fast one stopped.

Over HTTP/2 (a router with `protocol: h2`, docs/http2.md) only the two ends differ: steps 1-5
are `meshd.h2server:H2ServerProtocol.data_received` (the connection's codec, from
`meshd.http2.factory:new_codec`), `meshd.h2server:H2ServerProtocol._on_headers` (each stream's
header block becomes the same wire `Request`, `meshd.http2.convert:request_from_h2`) and
`meshd.h2server:H2ServerProtocol._serve` (one task per stream, same stats, admission and error
responder); steps 17-19 are `meshd.client:Client._send_h2` and `meshd.pool.h2:H2Pool.send`
(one stream on a multiplexed upstream connection). Steps 6-16 are the same code.

And back: the response returns through the same calls (the retry stage classifies it, the client
tells the balancer when its body ends) to `_serve`, which records it (and ends a sampled
request's span, `meshd.pipeline.tracing:end_request`) and calls
`meshd.listener:ServerProtocol._write_response` to write the head and stream the body.
"""
