# MixMicrobleedNet container: one Dockerfile, two builds.
#   GPU (default):  docker build -t mixmicrobleednet:latest .                      (./build.sh)
#   CPU:            docker build --build-arg DEVICE=cpu -t mixmicrobleednet:cpu .   (./build.sh --cpu)
# Offline (no registry, no network in the build): put the wheels in wheelhouse/ and use a local
# base image with python3 (./build.sh --cpu --offline does both, see scripts/).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG DEVICE=gpu
ARG OFFLINE=0
# requirements.txt is the whole tested environment (pip freeze), so it installs with --no-deps.
COPY requirements.txt /build/
COPY wheelhouse/ /build/wheelhouse/
RUN set -eu; python3 -m venv /opt/venv; \
    if [ "$OFFLINE" = 1 ]; then \
      [ "$(cat /build/wheelhouse/DEVICE)" = "$DEVICE" ] || { echo "wheelhouse/ holds $(cat /build/wheelhouse/DEVICE) wheels, DEVICE=$DEVICE" >&2; exit 1; }; \
      /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /build/wheelhouse --no-deps -r /build/requirements.txt; \
    else \
      index=""; if [ "$DEVICE" = cpu ]; then index="--index-url https://download.pytorch.org/whl/cpu"; fi; \
      /opt/venv/bin/pip install --no-cache-dir $index torch==2.13.0; \
      /opt/venv/bin/pip install --no-cache-dir --no-deps -r /build/requirements.txt; \
    fi
COPY pyproject.toml README.md /build/package/
COPY src /build/package/src
RUN if [ "$OFFLINE" = 1 ]; then extra="--no-index --find-links /build/wheelhouse"; fi; \
    /opt/venv/bin/pip install --no-cache-dir --no-deps $extra /build/package

FROM ${BASE_IMAGE}
ARG DEVICE=gpu
ARG GPU_COUNT=1
RUN groupadd -r algorithm && useradd -m --no-log-init -r -g algorithm algorithm \
    && mkdir -p /input /output /opt/ml/model && chown algorithm:algorithm /output
COPY --from=builder /opt/venv /opt/venv
COPY weights /opt/mixmicrobleednet/weights
COPY process.py /opt/mixmicrobleednet/
# Read-only root filesystem: every cache goes to /tmp (a tmpfs under `docker run --read-only`).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MIXMICROBLEEDNET_MODEL=/opt/mixmicrobleednet/weights \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    HOME=/tmp
USER algorithm
WORKDIR /opt/mixmicrobleednet
ENTRYPOINT ["python", "-m", "process"]

# gpu.memory: the paper's network peaked at 2.6 GiB reserved on a 192x512x512 case (README, H100).
LABEL org.opencontainers.image.title="MixMicrobleedNet" \
      org.opencontainers.image.description="Cerebral microbleed segmentation (T1, T2, T2*) with nnU-Net v2" \
      org.opencontainers.image.licenses="MIT" \
      nl.diagnijmegen.rse.algorithm.name=MixMicrobleedNet \
      nl.diagnijmegen.rse.algorithm.hardware.cpu.count=2 \
      nl.diagnijmegen.rse.algorithm.hardware.cpu.capabilities=() \
      nl.diagnijmegen.rse.algorithm.hardware.memory=8G \
      nl.diagnijmegen.rse.algorithm.hardware.gpu.count=${GPU_COUNT} \
      nl.diagnijmegen.rse.algorithm.hardware.gpu.cuda_compute_capability=() \
      nl.diagnijmegen.rse.algorithm.hardware.gpu.memory=4G \
      mixmicrobleednet.device=${DEVICE}
