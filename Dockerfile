# syntax=docker/dockerfile:1
# One image for every service of docker-compose.yml: the user-code gRPC server, the Dagster
# webserver and daemon, the sidecar and the simulated fleet (docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the wheels and install them, with the dependencies uv.lock pins, into a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# WITH_LAB=1 adds the lab (the simulated fleet of compose's demo profile); the product image
# leaves it out.
ARG WITH_LAB=0
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY perf_pipelines ./perf_pipelines
COPY lab ./lab
RUN python -m pip install "uv>=0.9,<1" \
 && groups="--no-dev" && if [ "$WITH_LAB" = "1" ]; then groups="--no-dev --group lab"; fi \
 && uv export --frozen $groups --no-emit-workspace --format requirements-txt -o /tmp/requirements.txt \
 && python -m pip wheel --no-deps --wheel-dir /wheels . \
 && if [ "$WITH_LAB" = "1" ]; then python -m pip wheel --no-deps --wheel-dir /wheels ./lab; fi \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/perf-pipelines --version

# --- runtime: the venv on a slim Python, no compilers, no sources, not root ------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home
RUN groupadd --system --gid 10001 perf \
 && useradd --system --uid 10001 --gid perf --home-dir /opt/dagster --no-create-home \
      --shell /usr/sbin/nologin perf
COPY --from=builder /opt/venv /opt/venv
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/dagster_home/
# DAGSTER_HOME/storage (compute logs) and /shared (the targets file) are volumes in compose;
# created here so that new volumes start owned by the service user. nux.yaml: no newsletter
# pop-up on the UI's first visit.
RUN mkdir -p /opt/dagster/dagster_home/storage /opt/dagster/dagster_home/.nux /opt/dagster/app \
      /shared \
 && echo "seen: 1" > /opt/dagster/dagster_home/.nux/nux.yaml \
 && chown -R perf:perf /opt/dagster /shared
USER perf:perf
WORKDIR /opt/dagster/app
EXPOSE 3000 4000 8002
CMD ["perf-pipelines", "--help"]
