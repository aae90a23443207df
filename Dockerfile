# meshd: a service-mesh proxy daemon. Build: docker build -t meshd:latest .
# Runs `meshd run -c /etc/meshd/meshd.yaml` as an unprivileged user; mount the config (and routes
# file) at /etc/meshd, e.g. from a ConfigMap (examples/kubernetes/).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY meshd ./meshd
COPY balancers ./balancers
COPY routing ./routing
COPY bench ./bench
COPY examples ./examples
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin meshd \
 && mkdir -p /etc/meshd && chown meshd /etc/meshd
USER 10001
# 4140 outgoing router, 4141 incoming router (DaemonSet mode), 9990 admin (metrics, readiness)
EXPOSE 4140 4141 9990
ENTRYPOINT ["meshd"]
CMD ["run", "-c", "/etc/meshd/meshd.yaml"]
