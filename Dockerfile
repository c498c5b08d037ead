# syntax=docker/dockerfile:1.7
# cdc-pipeline image: the `cdc` CLI, `accelerate launch cdc/train.py`, Prefect server/worker, MLflow server.
#   GPU (default): docker build -t cdc:latest .
#   CPU:           docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t cdc:cpu .
# The PyTorch wheels bring their CUDA libraries; the CUDA runtime base adds the rest of the user-space
# stack (needs the NVIDIA container toolkit on the host). Dependencies come from the lock file only.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- build: compilers live here only
FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential git \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/requirements.lock requirements/requirements.lock
RUN pip install -r requirements/requirements.lock
COPY pyproject.toml README.md ./
COPY cdc cdc
COPY shards shards
COPY pipelines pipelines
RUN pip install --no-deps .

# ---------------------------------------------------------------- runtime: no compilers
FROM ${PYTHON_IMAGE} AS python
FROM ${BASE_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*
# the interpreter the venv was built with (glibc of the base must be >= bookworm's 2.36)
COPY --from=python /usr/local /usr/local
COPY --from=build /opt/venv /opt/venv
RUN ldconfig && groupadd --gid 10001 cdc && useradd --uid 10001 --gid cdc --create-home --shell /bin/bash cdc
WORKDIR /app
COPY --chown=cdc:cdc cdc cdc
COPY --chown=cdc:cdc shards shards
COPY --chown=cdc:cdc pipelines pipelines
COPY --chown=cdc:cdc infra infra
COPY --chown=cdc:cdc prefect.yaml pyproject.toml ./
COPY --chown=cdc:cdc infra/docker/entrypoint.sh /usr/local/bin/cdc-entrypoint
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 CDC_HOME=/data/.cdc HOME=/home/cdc
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import cdc.codec, shards.reader, pipelines"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/cdc-entrypoint"]
CMD ["cdc", "--help"]
