#!/usr/bin/env bash
# Build the container image.
#   ./build.sh                  GPU image mixmicrobleednet:latest (standard python base, pip from the network)
#   ./build.sh --cpu            CPU image mixmicrobleednet:cpu
#   ./build.sh --cpu --offline  no registry and no network during the build: a debootstrap base
#                               image and a host-built wheelhouse/ (what hospitals and our CI use)
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
tag=mixmicrobleednet:latest gpus=1
if [ "$device" = cpu ]; then tag=mixmicrobleednet:cpu gpus=0; fi
args=(--build-arg DEVICE="$device" --build-arg GPU_COUNT="$gpus" --build-arg OFFLINE="$offline" -t "$tag")
if [ "$offline" = 1 ]; then
  scripts/wheelhouse.sh "$device"
  args+=(--build-arg BASE_IMAGE="$(scripts/offline-base.sh)" --network none)
fi
# The classic builder where BuildKit (buildx) is not installed.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
docker build "${args[@]}" .
echo "built $tag"
