# meshd — two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?= 60
RATE ?= 50
# The bank's event log: sqlite (embedded) or nats (a 3-node JetStream cluster the demo starts).
BUS ?= sqlite
# Debian packages the test suite and benchmarks run for real: nginx, HAProxy and wrk (bench),
# dnsmasq (dns namer), chromium (dashboard), nats-server and etcd-server (the bank's event log and
# locks, docs/events.md), openssl (TLS tests: `openssl s_client`), nghttp2 (h2load and nghttpd:
# HTTP/2 smoke test, grpc bench), prometheus (`prometheus` and `promtool`: tests/system/test_prometheus.py).
DEBIAN_PACKAGES := nginx haproxy wrk dnsmasq chromium nats-server etcd-server openssl nghttp2-client nghttp2-server prometheus
PROGRAMS := nginx haproxy wrk dnsmasq chromium nats-server etcd openssl h2load nghttpd prometheus promtool

.PHONY: FORCE install compile build-deps test lint typecheck unit demo bench bench-peers system-deps clean \
  docker-engine image image-test fuzz

# The hot path: `pip install` compiles it with mypyc (setup.py; docs/architecture.md, "Building and
# packaging"). `make install` is an editable install, which builds the C extensions beside their
# sources; this list makes it build them again when one of them changes (`import meshd` refuses
# a build older than its source). MESHD_PURE=1 builds none (and removes the ones there are).
# Keep in step with meshd.COMPILED_MODULES (a test checks).
HOT := meshd/listener.py \
  meshd/fastpath.py \
  meshd/pool/connection.py \
  meshd/http/codec.py \
  meshd/http/body.py \
  meshd/http/framing.py \
  meshd/http/messages.py \
  meshd/http/headers.py \
  meshd/pipeline/context.py \
  meshd/pipeline/stack.py \
  meshd/pipeline/hygiene.py \
  meshd/pipeline/identify.py \
  meshd/pipeline/bind.py \
  meshd/pipeline/assemble.py \
  meshd/pipeline/timeouts.py \
  meshd/pipeline/retries.py \
  meshd/pipeline/stats.py \
  meshd/pipeline/dispatch.py \
  meshd/pipeline/tracing.py \
  meshd/pipeline/authorize.py \
  meshd/tracing/propagation.py \
  meshd/tracing/spans.py \
  meshd/router.py \
  meshd/client.py \
  meshd/pool/pool.py \
  meshd/retry/budget.py \
  meshd/expiry.py \
  meshd/admission.py \
  meshd/h2server.py \
  meshd/h2fast.py \
  meshd/pool/h2.py \
  meshd/http2/codec.py \
  meshd/http2/convert.py \
  meshd/http2/guard.py \
  meshd/http2/nghttp2.py \
  meshd/grpc/status.py \
  meshd/grpc/stats.py \
  balancers/base.py \
  balancers/node.py \
  balancers/p2c.py \
  balancers/peak_ewma.py \
  balancers/ewma.py \
  balancers/accrual.py \
  balancers/round_robin.py \
  balancers/least_loaded.py \
  balancers/membership.py
# Not mypyc: the cffi binding of libnghttp2 (the fast HTTP/2 codec), built by the same install when
# libnghttp2-dev is there (build-deps installs it); under CI=true it must be built.
NATIVE := meshd/http2/_nghttp2_build.py meshd/http2/nghttp2_glue.c
NATIVE_SO = meshd/http2/_nghttp2.*.so
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Dependencies, and the build's own requirements (setuptools, wheel; mypy comes with the test
# extras), so that rebuilding the hot path uses what `mypy --strict` checks against and no network.
$(VENV)/.installed: setup.cfg setup.py pyproject.toml | $(PY)
	$(PY) -m pip install -q 'setuptools>=64' wheel
	MESHD_PURE=1 $(PY) -m pip install -q --no-build-isolation -e '.[test,bench]'
	touch $@

# The stamp holds what was built (compiled or pure): asking for the other one rebuilds.
# meshd-compiled.pth: what earlier versions of this Makefile used instead of a package build.
BUILD_MODE := $(if $(filter 1,$(MESHD_PURE)),pure,compiled)
BUILT_MODE := $(shell cat $(VENV)/.compiled 2>/dev/null)
$(VENV)/.compiled: $(HOT) $(NATIVE) $(VENV)/.installed $(if $(filter $(BUILD_MODE),$(BUILT_MODE)),,FORCE) | build-deps
	rm -f $@ $(addsuffix .*.so,$(basename $(HOT))) *__mypyc.*.so $(NATIVE_SO) "$(SITE)/meshd-compiled.pth"
	MESHD_PURE=$(MESHD_PURE) $(PY) -m pip install -q --no-build-isolation --no-deps -e . \
	  >build-mypyc.log 2>&1 || { cat build-mypyc.log; exit 1; }
	@if ls $(addsuffix .*.so,$(basename $(firstword $(HOT)))) >/dev/null 2>&1; then \
	  echo "compiled with mypyc: $(words $(HOT)) hot-path modules"; echo compiled > $@; \
	elif [ "$(MESHD_PURE)" = 1 ]; then echo "MESHD_PURE=1: the hot path runs as pure Python"; \
	elif [ "$$CI" = true ]; then cat build-mypyc.log; echo "no C compiler (apt-get install gcc python3-dev)"; exit 1; \
	else echo "no C compiler: the hot path runs as pure Python (apt-get install gcc python3-dev to compile it)"; fi
	@if [ "$(MESHD_PURE)" != 1 ] && ! ls $(NATIVE_SO) >/dev/null 2>&1; then \
	  if [ "$$CI" = true ]; then cat build-mypyc.log; echo "the libnghttp2 binding was not built (apt-get install libnghttp2-dev)"; exit 1; fi; \
	  echo "the libnghttp2 binding was not built: HTTP/2 runs on the h2 codec (apt-get install libnghttp2-dev)"; fi
	@[ -s $@ ] || echo pure > $@

install: $(VENV)/.compiled

FORCE:

compile: $(VENV)/.compiled

# gcc and the Python headers, for mypyc, and libnghttp2-dev for the HTTP/2 codec's binding;
# installed when missing and we may (root or sudo).
build-deps: | $(PY)
	@if [ "$(MESHD_PURE)" != 1 ] && { ! command -v cc >/dev/null 2>&1 || [ ! -f /usr/include/nghttp2/nghttp2.h ] || \
	    ! $(PY) -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'; }; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then echo "installing gcc, python3-dev and libnghttp2-dev for the compiled modules"; \
	    $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q gcc python3-dev libnghttp2-dev; fi; \
	fi

system-deps:
	@missing=""; for p in $(PROGRAMS); do command -v $$p >/dev/null 2>&1 || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "missing:$$missing — run: apt-get install $(DEBIAN_PACKAGES)"; exit 1; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(DEBIAN_PACKAGES); \
	fi

# lint-imports: the import contracts in pyproject.toml (docs/architecture.md, "Layers").
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(VENV)/bin/mypy

# The bench smoke test also runs meshd itself (MESHD_BENCH_SMOKE_MESHD=1); never a timed test.
# The suite runs with the fast path on (the default); the proxy-behaviour tests run again with it
# off (MESHD_FAST_PATH=0: every request on the coroutine path; meshd/fastpath.py, meshd/h2fast.py), about 35 s.
SLOW_PATH_TESTS := tests/integration/test_proxy_basics.py tests/integration/test_bad_input.py \
  tests/integration/test_failures.py tests/integration/test_retries.py tests/integration/test_retry_limits.py \
  tests/integration/test_circuit_breakers.py tests/integration/test_streaming.py tests/integration/test_pool.py \
  tests/integration/test_tracing.py \
  tests/integration/test_h2_proxy.py tests/integration/test_h2_grpc.py tests/integration/test_grpc_wired.py
test: install system-deps lint typecheck
	MESHD_BENCH_SMOKE_MESHD=1 $(PY) -m pytest
	MESHD_FAST_PATH=0 $(PY) -m pytest -q -p no:cacheprovider $(SLOW_PATH_TESTS)

# Long fuzzing of the request path (docs/operations.md, "Fuzzing the request path"): FUZZ_EXAMPLES
# new random inputs (20,000 take about 10 minutes); `make test` runs 40 of them.
FUZZ_EXAMPLES ?= 20000
fuzz: install
	MESHD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -p no:cacheprovider -q --timeout 0 --hypothesis-show-statistics \
	  tests/integration/test_fuzz_requests.py

demo: install $(if $(filter nats,$(BUS)),system-deps)
	$(PY) -m examples.bank.demo --duration $(DURATION) --rate $(RATE) --bus $(BUS)

bench: install bench-peers
	$(VENV)/bin/meshd-bench all

bench-peers: install system-deps

# The container image (Dockerfile): meshd:latest, and meshd-examples:latest (the same install plus
# examples/, for examples/kubernetes/). BASE is the image both stages start from. When BASE is
# neither present nor pullable (no registry reachable), a stand-in is built from Debian's packages
# (.ci/standin-base: debootstrap, Python 3.11) and used instead, and the build says so. The build
# uses the host's network (--network host), as a build machine may have no NAT for containers.
IMAGE ?= meshd:latest
EXAMPLES_IMAGE ?= meshd-examples:latest
BASE ?= python:3.11-slim
STANDIN_BASE ?= meshd-base:bookworm
DOCKER ?= docker

# The Docker engine: dockerd is started (as root, from Debian's docker.io when missing) if none answers.
docker-engine:
	@if ! $(DOCKER) info >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then echo "no Docker engine reachable ('$(DOCKER) info' failed): start dockerd, or set DOCKER_HOST to one"; exit 1; fi; \
	  command -v dockerd >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null; }; \
	  echo "starting dockerd (log: /tmp/meshd-dockerd.log)"; \
	  (setsid dockerd >/tmp/meshd-dockerd.log 2>&1 &); \
	  for i in $$(seq 1 300); do $(DOCKER) info >/dev/null 2>&1 && break; sleep 0.1; done; \
	  $(DOCKER) info >/dev/null 2>&1 || { tail -20 /tmp/meshd-dockerd.log; echo "dockerd did not start"; exit 1; }; \
	fi

image: docker-engine
	@base='$(BASE)'; \
	if ! $(DOCKER) image inspect "$$base" >/dev/null 2>&1 && ! timeout 60 $(DOCKER) pull -q "$$base" >/dev/null 2>&1; then \
	  echo "cannot pull $$base: building the stand-in base $(STANDIN_BASE) from Debian packages"; \
	  DOCKER=$(DOCKER) .ci/standin-base $(STANDIN_BASE) || exit 1; base='$(STANDIN_BASE)'; \
	fi; \
	mkdir -p .image-ca && rm -f .image-ca/ca.crt; \
	cert="$${PIP_CERT:-$$(python3 -m pip config get global.cert 2>/dev/null || true)}"; \
	if [ -n "$$cert" ] && [ -f "$$cert" ]; then cp "$$cert" .image-ca/ca.crt; echo "the build stage's pip trusts $$cert (pip's cert setting here)"; fi; \
	echo "building $(IMAGE) and $(EXAMPLES_IMAGE) from $$base"; \
	$(DOCKER) build --network host --build-arg BASE="$$base" -t $(IMAGE) . && \
	$(DOCKER) build --network host --build-arg BASE="$$base" --target examples -t $(EXAMPLES_IMAGE) .

# Runs the image, proxies a request through it to an upstream on the host's loopback, and checks
# that meshd runs as uid 10001 with its compiled hot path loaded, without pip (.ci/image-test).
image-test: image
	DOCKER=$(DOCKER) IMAGE=$(IMAGE) .ci/image-test

clean:
	rm -f $(addsuffix .*.so,$(basename $(HOT))) *__mypyc.*.so $(NATIVE_SO) build-mypyc.log
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .demo bench/results .image-ca/ca.crt
