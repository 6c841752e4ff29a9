# syntax=docker/dockerfile:1
# The flows worker image: `flows run <app>` with the wheel of this repository and its
# dependencies in a venv, run as an unprivileged user.
#
#   docker build -t flows .
#   docker run --rm --network host flows list
#   docker compose --profile demo up          # Kafka, PostgreSQL and the wordcount worker
#
# BASE is any image with python3 >= 3.11 and its venv module (Debian: python3-venv). Both
# stages use it, so the venv's interpreter symlinks resolve to the same path in the runtime
# stage. Machines without Docker Hub pass their own, e.g. one imported from a debootstrap
# rootfs: `--build-arg BASE=localhost/flows-base` (see scripts/image.sh).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
# Only what the wheel is made of (the rest is in .dockerignore), so editing a test does not
# invalidate this layer.
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY runtimes ./runtimes
COPY examples ./examples
# Build the wheel first, then install it: the venv gets exactly what a user's `pip install`
# would get, not the source tree.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && /opt/venv/bin/pip install --no-cache-dir /dist/flows-*.whl

FROM ${BASE} AS runtime
# A fixed uid so volumes and Kubernetes' runAsNonRoot/runAsUser can name it.
RUN groupadd --system --gid 10001 flows \
    && useradd --system --uid 10001 --gid flows --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin flows
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLOWS_HTTP_HOST=0.0.0.0 \
    FLOWS_HTTP_PORT=8080
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
# /healthz answers 200 while the process runs; urllib raises (exit 1) on anything else, so
# no curl is needed in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://localhost:' + os.environ.get('FLOWS_HTTP_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["flows"]
CMD ["run", "wordcount"]
