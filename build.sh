#!/usr/bin/env bash
# Build the container image from a host-made wheelhouse (scripts/wheelhouse.sh: PyPI, once, cached).
#   ./build.sh                  GPU image mixmicrobleednet:latest (CUDA build of PyTorch)
#   ./build.sh --cpu            CPU image mixmicrobleednet:cpu
#   ./build.sh [--cpu] --offline  no registry at all: a debootstrap base image instead of
#                               python:3.11-slim-bookworm (what hospitals and our CI use)
# The build stops when the image's PyTorch does not match the device (CUDA for gpu, none for cpu);
# the labels mixmicrobleednet.torch.version / .cuda say what is inside.
set -euo pipefail
cd "$(dirname "$0")"
device=gpu offline=0
for arg in "$@"; do
  case $arg in
    --cpu) device=cpu ;;
    --offline) offline=1 ;;
    *) echo "usage: $0 [--cpu] [--offline]" >&2; exit 2 ;;
  esac
done
[ -f weights/plans.json ] || { echo "weights/ holds no model (weights/plans.json missing)" >&2; exit 1; }
tag=mixmicrobleednet:latest gpus=1 gpu_memory=4G
if [ "$device" = cpu ]; then tag=mixmicrobleednet:cpu gpus=0 gpu_memory=0G; fi
scripts/wheelhouse.sh "$device"
read -r torch_version torch_cuda < "wheelhouse/$device/TORCH"
args=(--build-arg DEVICE="$device" --build-arg GPU_COUNT="$gpus" --build-arg GPU_MEMORY="$gpu_memory"
      --build-arg TORCH_VERSION="$torch_version" --build-arg TORCH_CUDA="$torch_cuda" -t "$tag")
if [ "$offline" = 1 ]; then args+=(--build-arg BASE_IMAGE="$(scripts/offline-base.sh)" --network none); fi
# The build context holds this device's wheels only (hard links: no copying), not both devices' GBs.
context=build/context-$device
rm -rf "$context" && mkdir -p "$context/wheelhouse"
cp -al Dockerfile requirements.txt pyproject.toml README.md process.py src weights "$context/"
cp -al "wheelhouse/$device" "$context/wheelhouse/"
find "$context" -name __pycache__ -prune -exec rm -rf {} +
# The classic builder where BuildKit (buildx) is not installed.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
docker build "${args[@]}" "$context"
echo "built $tag (torch $torch_version, CUDA $torch_cuda)"
