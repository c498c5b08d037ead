# syntax=docker/dockerfile:1.7
# cdc-pipeline image: the `cdc` CLI, `accelerate launch cdc/train.py`, Prefect server/worker, MLflow server.
#   GPU (default): docker build -t cdc:latest .
#   CPU:           docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t cdc:cpu .
#   No registry:   infra/podman/make-base.sh, then PYTHON_IMAGE=BASE_IMAGE=localhost/cdc-base:bookworm
#                  (docs/infrastructure.md)
# The PyTorch wheels bring their CUDA libraries; the CUDA runtime base adds the rest of the user-space
# stack (needs the NVIDIA container toolkit on the host). Dependencies come from the lock file only.
# One stage installs them: every locked package is a wheel but DeepSpeed, whose source installs
# without compilers (its ops are built just in time), so no build stage has to hand a 7 GB virtual
# environment over (that copy doubled the disk a build needs and its time).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${PYTHON_IMAGE} AS python
FROM ${BASE_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*
# the interpreter of the Python image (glibc of the base must be >= bookworm's 2.36)
COPY --from=python /usr/local /usr/local
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN ldconfig && python -m venv /opt/venv
COPY requirements/requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock && rm /tmp/requirements.lock
RUN groupadd --gid 10001 cdc && useradd --uid 10001 --gid cdc --create-home --shell /bin/bash cdc
WORKDIR /app
COPY --chown=cdc:cdc pyproject.toml README.md ./
COPY --chown=cdc:cdc cdc cdc
COPY --chown=cdc:cdc shards shards
COPY --chown=cdc:cdc pipelines pipelines
RUN pip install --no-deps --no-build-isolation .
COPY --chown=cdc:cdc infra infra
COPY --chown=cdc:cdc prefect.yaml ./
COPY --chown=cdc:cdc infra/docker/entrypoint.sh /usr/local/bin/cdc-entrypoint
ENV PYTHONUNBUFFERED=1 CDC_HOME=/data/.cdc HOME=/home/cdc
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import cdc.models.codec, shards.reader, pipelines"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/cdc-entrypoint"]
CMD ["cdc", "--help"]
