# inergize-analytics: one image for every process (gateway, worker, migrate, up).
#
#   docker build -t inergize-analytics .
#   docker run --rm -p 3004:3004 -p 3007:3007 -e JWT_SECRET=... inergize-analytics
#
# The image defaults to APP_ENV=production, so it refuses a missing or placeholder JWT_SECRET;
# docker-compose.yml overrides that with APP_ENV=development for local work.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: installs the project and its dependencies into /opt/venv
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A venv without pip of its own: the base image's pip installs into it, so the runtime image
# carries no installer.
RUN python -m venv --without-pip /opt/venv

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip --python /opt/venv/bin/python install -r /tmp/requirements.txt

# Then the project itself, as a regular (non-editable) wheel install; the migrations' *.sql
# files travel as package data. .dockerignore keeps tests, docs, load and caches out.
COPY . ./
RUN pip --python /opt/venv/bin/python install --no-deps . \
 && /opt/venv/bin/python -c "import importlib.resources as r; n = sum(p.name.endswith('.sql') for p in r.files('migrations').iterdir()); assert n, 'no *.sql in the installed migrations package'; print(n, 'migration files installed')" \
 && /opt/venv/bin/analytics --help > /dev/null

# ---------------------------------------------------------------------------------------------
# runtime: the venv on a clean slim base, run as an unprivileged user
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="inergize-analytics" \
      org.opencontainers.image.description="Real-time analytics pipeline: ingest gateway, Redis Streams workers, TimescaleDB storage" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 analytics \
 && useradd --system --uid 10001 --gid analytics --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin analytics \
 && mkdir -p /app && chown analytics:analytics /app

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_ENV=production \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=3004 \
    WS_PORT=3007 \
    METRICS_PORT=9464

WORKDIR /app
# Numeric, so orchestrators that check runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# 3004 HTTP gateway, 3007 WebSocket, 9464 Prometheus metrics.
EXPOSE 3004 3007 9464

# Liveness of the gateway (slim has no curl). A worker container overrides this with a probe of
# its metrics port; see docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HTTP_PORT', '3004'), timeout=3)"]

# The process handles SIGTERM itself (graceful shutdown), and exec form keeps it PID 1.
STOPSIGNAL SIGTERM
CMD ["analytics", "gateway"]
