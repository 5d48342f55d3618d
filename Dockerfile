# MixMicrobleedNet container: one Dockerfile, two builds, both from a host-made wheelhouse
# (scripts/wheelhouse.sh) that build.sh serves on the host's loopback for the length of the build:
# no registry is reached, and the GBs of wheels are neither sent as build context nor kept in a layer
# (one stage, one copy of PyTorch: the CI machine ran out of disk with a builder stage).
#   GPU (default):  ./build.sh           mixmicrobleednet:latest, PyPI's CUDA build of PyTorch
#   CPU:            ./build.sh --cpu     mixmicrobleednet:cpu, PyTorch's CPU build
# --offline also takes a local base image with python3 (debootstrap; scripts/offline-base.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}
ARG DEVICE=gpu
ARG GPU_COUNT=1
ARG GPU_MEMORY=4G
ARG TORCH_VERSION
ARG TORCH_CUDA
# Where build.sh serves the wheelhouse (a fixed address, so that the layers below stay cached).
ARG WHEELS
RUN groupadd -r algorithm && useradd -m --no-log-init -r -g algorithm algorithm \
    && mkdir -p /input /output /opt/ml/model && chown algorithm:algorithm /output
COPY requirements.txt /opt/mixmicrobleednet/
# requirements.txt is the tested environment (pip freeze of the CPU build), so the rest installs with
# --no-deps; torch installs with its dependencies (on the GPU build: the CUDA libraries, once),
# held to the same pins.
RUN set -eu; python3 -m venv /opt/venv; \
    grep -v '^torch==' /opt/mixmicrobleednet/requirements.txt > /tmp/pins.txt; \
    pip="/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links ${WHEELS}"; \
    $pip -c /tmp/pins.txt "torch===${TORCH_VERSION}"; \
    $pip --no-deps -r /tmp/pins.txt; \
    rm /tmp/pins.txt
# The build fails when the image's PyTorch is not what DEVICE and the labels say (the CUDA wheel's
# file says 2.13.0, torch itself 2.13.0+cu130: the public version and the CUDA version must agree).
RUN /opt/venv/bin/python -c "import sys, torch; cuda = torch.version.cuda or 'none'; \
    problems = [p for p, bad in ((f'DEVICE=${DEVICE} but torch {torch.__version__} has CUDA {cuda}', \
                                  ('${DEVICE}' == 'gpu') != (cuda != 'none')), \
                                 (f'torch {torch.__version__} with CUDA {cuda} is not the labelled ${TORCH_VERSION} with CUDA ${TORCH_CUDA}', \
                                  (torch.__version__.split('+')[0], cuda) != ('${TORCH_VERSION}'.split('+')[0], '${TORCH_CUDA}'))) if bad]; \
    sys.exit('; '.join(problems) if problems else 0)"
# Our package last: a change to src/ rebuilds a small layer, not the GBs above. The package carries
# the shipped models (pyproject.toml maps models/ into it; --model NAME, auto: per case the one that fits).
COPY pyproject.toml README.md /tmp/package/
COPY src /tmp/package/src
COPY models /tmp/package/models
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --no-index \
        --find-links ${WHEELS} /tmp/package \
    && rm -rf /tmp/package
# Microbleed regions: Colin27's brain, AAL and the JHU white-matter labels from Debian's mricron-data
# (build.sh copies them, with Debian's copyright file, from the host's package).
COPY build/atlas /opt/mixmicrobleednet/atlas
COPY process.py /opt/mixmicrobleednet/
# The image's own name, for the BIDS derivatives' GeneratedBy (declared here: changing it rebuilds nothing above).
ARG IMAGE_TAG=mixmicrobleednet
# Read-only root filesystem: every cache goes to /tmp (a tmpfs under `docker run --read-only`).
ENV PATH=/opt/venv/bin:$PATH \
    MIXMICROBLEEDNET_IMAGE=${IMAGE_TAG} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MIXMICROBLEEDNET_ATLAS_DIR=/opt/mixmicrobleednet/atlas \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    HOME=/tmp
USER algorithm
WORKDIR /opt/mixmicrobleednet
# By path, not `-m process`: Apptainer starts in the caller's folder, not in WORKDIR.
ENTRYPOINT ["python", "/opt/mixmicrobleednet/process.py"]

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
      nl.diagnijmegen.rse.algorithm.hardware.gpu.memory=${GPU_MEMORY} \
      mixmicrobleednet.device=${DEVICE} \
      mixmicrobleednet.torch.version=${TORCH_VERSION} \
      mixmicrobleednet.torch.cuda=${TORCH_CUDA}
