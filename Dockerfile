# meshd: a service-mesh proxy daemon. Build: `make image` (docker build -t meshd:latest .); try it:
# `make image-test`. Runs `meshd run -c /etc/meshd/meshd.yaml` as an unprivileged user (uid 10001);
# mount the config (and routes file) at /etc/meshd, e.g. from a ConfigMap (examples/kubernetes/).
# `--target examples` builds meshd-examples:latest: the same install plus examples/ in /app.
# BASE: the image both stages start from; any Debian-like image with Python 3.11 as `python` and
# its venv module. Where python:3.11-slim cannot be pulled, `make image` builds a stand-in from
# Debian's packages (.ci/standin-base) and passes it here.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# gcc for mypyc, which compiles the hot path (meshd.COMPILED_MODULES) into C extensions; the
# Python headers come with the python image, and from python3-dev on a plain Debian base;
# libnghttp2-dev for the cffi binding of the HTTP/2 codec (meshd.http2._nghttp2).
RUN headers=$(python -c 'import os, sysconfig; print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")') \
 && apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev $headers && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.cfg setup.py README.md ./
COPY meshd ./meshd
COPY balancers ./balancers
COPY routing ./routing
COPY bench ./bench
# A build machine behind a TLS-intercepting proxy: `make image` puts the CA bundle the host's pip
# trusts (pip's `cert` setting or PIP_CERT) here, and pip in this stage uses it. Empty otherwise;
# never in the runtime image.
COPY .image-ca /tmp/image-ca
# The wheel, as `pip wheel .` builds it anywhere: setup.py compiles the hot path with mypyc (pip
# fetches mypy and the packages whose types it reads into the build's own environment; pip comes
# from a throwaway virtualenv, as a plain Debian Python has none). Then a virtualenv with the
# wheel and its dependencies, without pip and setuptools, and a check, from outside the source
# tree, that every hot-path module loads from its C extension (a build that fell back to pure
# Python fails here).
RUN if [ -s /tmp/image-ca/ca.crt ]; then export PIP_CERT=/tmp/image-ca/ca.crt; fi \
 && python -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/meshd \
 && /opt/meshd/bin/pip install --no-cache-dir /wheels/meshd-*.whl \
 && /opt/meshd/bin/pip uninstall -y pip setuptools \
 && cd / && /opt/meshd/bin/python -c 'import importlib, meshd; pure = [m for m in meshd.COMPILED_MODULES if not str(importlib.import_module(m).__file__).endswith(".so")]; assert not pure, f"interpreted: {pure}"; import meshd.http2.nghttp2 as n; assert n.AVAILABLE, n.WHY_UNAVAILABLE'

FROM ${BASE} AS runtime
COPY --from=build /opt/meshd /opt/meshd
# libnghttp2-14: the C library the HTTP/2 codec's binding links to.
# No pip or setuptools at run time, in the base's Python either: nothing installs into a proxy.
RUN apt-get update && apt-get install -y --no-install-recommends libnghttp2-14 && rm -rf /var/lib/apt/lists/* \
 && if python -m pip --version >/dev/null 2>&1; then python -m pip uninstall -y pip setuptools wheel; fi \
 && ! python -c 'import pip' 2>/dev/null && ! python -c 'import setuptools' 2>/dev/null \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin meshd \
 && mkdir -p /etc/meshd && chown meshd /etc/meshd
ENV PATH=/opt/meshd/bin:$PATH
USER 10001
# 4140 outgoing router, 4141 incoming router (DaemonSet mode), 9990 admin (metrics, readiness)
EXPOSE 4140 4141 9990
ENTRYPOINT ["meshd"]
CMD ["run", "-c", "/etc/meshd/meshd.yaml"]

# meshd-examples:latest, for the bank services of examples/kubernetes/40-bank.yaml
# (`python -m examples.bank.accounts` and so on, from /app).
FROM runtime AS examples
COPY examples /app/examples
WORKDIR /app
ENTRYPOINT []
CMD ["python", "-m", "examples.bank.demo"]

# The default target: meshd:latest.
FROM runtime AS meshd
