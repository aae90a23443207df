# meshd: a service-mesh proxy daemon. Build: docker build -t meshd:latest .
# Runs `meshd run -c /etc/meshd/meshd.yaml` as an unprivileged user; mount the config (and routes
# file) at /etc/meshd, e.g. from a ConfigMap (examples/kubernetes/).
FROM python:3.11-slim AS build
# gcc for mypyc, which compiles the hot path (meshd.COMPILED_MODULES) into C extensions; the
# Python headers come with the python image.
RUN apt-get update && apt-get install -y --no-install-recommends gcc && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY meshd ./meshd
COPY balancers ./balancers
COPY routing ./routing
COPY bench ./bench
COPY examples ./examples
# Compiled in the source tree (where mypy sees the project as make does), then the extensions
# are copied beside the installed modules; mypyc's shared runtime module goes to the top level.
RUN python -m venv /opt/meshd \
 && /opt/meshd/bin/pip install --no-cache-dir . "mypy>=2.4,<3" \
 && /opt/meshd/bin/mypyc $(/opt/meshd/bin/python -c 'import meshd; print(" ".join(m.replace(".", "/") + ".py" for m in meshd.COMPILED_MODULES))') \
 && SITE="$(/opt/meshd/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && cp ./*__mypyc.*.so "$SITE/" \
 && find meshd balancers -name '*.so' -exec cp --parents {} "$SITE/" \; \
 && cd / && /opt/meshd/bin/python -c 'import importlib, meshd; assert all(importlib.import_module(m).__file__.endswith(".so") for m in meshd.COMPILED_MODULES)' \
 && /opt/meshd/bin/pip uninstall -y mypy mypy_extensions

FROM python:3.11-slim
COPY --from=build /opt/meshd /opt/meshd
ENV PATH=/opt/meshd/bin:$PATH
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin meshd \
 && mkdir -p /etc/meshd && chown meshd /etc/meshd
USER 10001
# 4140 outgoing router, 4141 incoming router (DaemonSet mode), 9990 admin (metrics, readiness)
EXPOSE 4140 4141 9990
ENTRYPOINT ["meshd"]
CMD ["run", "-c", "/etc/meshd/meshd.yaml"]
