# meshd — two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?= 60
RATE ?= 50
# Debian packages the test suite and benchmarks run for real: nginx, HAProxy and wrk (bench),
# dnsmasq (dns namer), chromium (dashboard).
DEBIAN_PACKAGES := nginx haproxy wrk dnsmasq chromium
PROGRAMS := nginx haproxy wrk dnsmasq chromium

.PHONY: FORCE install compile build-deps test lint typecheck unit demo bench bench-peers system-deps clean

# The hot path, compiled with mypyc into C extensions next to their sources (docs/architecture.md,
# "The compiled hot path"). The Python sources stay the code; MESHD_PURE=1 skips compiling (and
# removes compiled modules), and meshd ignores a compiled module older than its source.
# Keep in step with meshd.COMPILED_MODULES (a test checks).
HOT := meshd/listener.py \
  meshd/pool/connection.py \
  meshd/http/body.py \
  meshd/http/framing.py \
  meshd/http/messages.py \
  meshd/http/headers.py \
  meshd/pipeline/stack.py \
  meshd/pipeline/hygiene.py \
  meshd/pipeline/identify.py \
  meshd/pipeline/bind.py \
  meshd/pipeline/assemble.py \
  meshd/pipeline/timeouts.py \
  meshd/pipeline/retries.py \
  meshd/pipeline/stats.py \
  meshd/pipeline/dispatch.py \
  meshd/router.py \
  meshd/client.py \
  meshd/pool/pool.py \
  meshd/retry/budget.py \
  balancers/base.py \
  balancers/node.py \
  balancers/p2c.py \
  balancers/peak_ewma.py \
  balancers/ewma.py \
  balancers/accrual.py \
  balancers/round_robin.py \
  balancers/least_loaded.py \
  balancers/membership.py
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# mypyc writes one shared runtime module at the project root: the .pth puts the root on sys.path.
# The touch: mypyc reuses unchanged builds and copies them with their old times, which meshd's
# stale-build check would take for builds older than their sources.
# The stamp holds what was built (compiled or pure): asking for the other one rebuilds.
BUILD_MODE := $(if $(filter 1,$(MESHD_PURE)),pure,compiled)
BUILT_MODE := $(shell cat $(VENV)/.compiled 2>/dev/null)
$(VENV)/.compiled: $(HOT) $(VENV)/.installed $(if $(filter $(BUILD_MODE),$(BUILT_MODE)),,FORCE) | build-deps
	rm -f $@ $(addsuffix .*.so,$(basename $(HOT))) *__mypyc.*.so
	@if [ "$(MESHD_PURE)" = 1 ]; then echo "MESHD_PURE=1: the hot path runs as pure Python"; \
	elif command -v cc >/dev/null 2>&1; then \
	  $(VENV)/bin/mypyc $(HOT) >build-mypyc.log 2>&1 || { cat build-mypyc.log; exit 1; }; \
	  touch $(addsuffix .*.so,$(basename $(HOT))); \
	  echo "$(CURDIR)" > "$(SITE)/meshd-compiled.pth"; echo "compiled with mypyc: $(HOT)"; \
	  echo compiled > $@; \
	elif [ "$$CI" = true ]; then echo "no C compiler (apt-get install gcc python3-dev)"; exit 1; \
	else echo "no C compiler: the hot path runs as pure Python (apt-get install gcc python3-dev to compile it)"; fi
	@[ -s $@ ] || echo pure > $@

install: $(VENV)/.compiled

FORCE:

compile: $(VENV)/.compiled

# gcc and the Python headers, for mypyc; installed when missing and we may (root or sudo).
build-deps: | $(PY)
	@if [ "$(MESHD_PURE)" != 1 ] && { ! command -v cc >/dev/null 2>&1 || \
	    ! $(PY) -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'; }; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then echo "installing gcc and python3-dev for mypyc"; \
	    $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q gcc python3-dev; fi; \
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
test: install system-deps lint typecheck
	MESHD_BENCH_SMOKE_MESHD=1 $(PY) -m pytest

demo: install
	$(PY) -m examples.bank.demo --duration $(DURATION) --rate $(RATE)

bench: install bench-peers
	$(VENV)/bin/meshd-bench all

bench-peers: install system-deps

clean:
	rm -f $(addsuffix .*.so,$(basename $(HOT))) *__mypyc.*.so build-mypyc.log
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .demo bench/results
