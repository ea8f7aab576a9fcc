# syntax=docker/dockerfile:1.7
# One image for every Fairway process: fairway web|gateway|relay|scheduler|monitor|archiver|
# declare|simulate, and celery -A tasks worker|beat. Build: docker build -t fairway:local .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels for Fairway and every dependency (no compilers in the runtime image)
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN python -m pip wheel --wheel-dir /wheels .

# ---- runtime: a virtualenv installed from those wheels only, run as an unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/fairway/bin:$PATH \
    FAIRWAY_WEB_HOST=0.0.0.0 FAIRWAY_GATEWAY_HOST=0.0.0.0
RUN groupadd --system --gid 10001 fairway \
    && useradd --system --uid 10001 --gid fairway --home-dir /var/lib/fairway \
       --create-home --shell /usr/sbin/nologin fairway \
    && install -d -o fairway -g fairway /var/lib/fairway/beat
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/fairway \
    && /opt/fairway/bin/pip install --no-index --find-links /wheels fairway
COPY --chmod=0755 deploy/healthcheck.py /opt/fairway/bin/fairway-healthcheck
COPY --chmod=0755 deploy/create_operator.py /opt/fairway/bin/fairway-create-operator
USER 10001:10001
WORKDIR /var/lib/fairway
# 8080 web app, 8081 push gateway, 8082 the web app's broker auth (FAIRWAY_BROKER_AUTH_PORT),
# 9100 Prometheus metrics (FAIRWAY_METRICS_PORT).
EXPOSE 8080 8081 8082 9100
CMD ["fairway", "--help"]
