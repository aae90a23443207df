# meshd — two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?= 60
RATE ?= 50
# Debian packages the test suite and benchmarks run for real: nginx, HAProxy and wrk (bench),
# dnsmasq (dns namer), chromium (dashboard).
DEBIAN_PACKAGES := nginx haproxy wrk dnsmasq chromium
PROGRAMS := nginx haproxy wrk dnsmasq chromium

.PHONY: install test lint typecheck unit demo bench bench-peers system-deps clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(PROGRAMS); do command -v $$p >/dev/null 2>&1 || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "missing:$$missing — run: apt-get install $(DEBIAN_PACKAGES)"; exit 1; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(DEBIAN_PACKAGES); \
	fi

lint: install
	$(VENV)/bin/ruff check .

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
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .demo bench/results
