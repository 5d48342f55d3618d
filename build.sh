#!/usr/bin/env bash
# Build the container image from a host-made wheelhouse (scripts/wheelhouse.sh: PyPI, once, cached).
#   ./build.sh                  GPU image mixmicrobleednet:latest (CUDA build of PyTorch)
#   ./build.sh --cpu            CPU image mixmicrobleednet:cpu
#   ./build.sh [--cpu] --offline  no registry at all: a debootstrap base image instead of
#                               python:3.11-slim-bookworm (what hospitals and our CI use)
#   ./build.sh --wheelhouse cpu --tag T   install another device's wheels (the tests' failing build)
# The build stops when the image's PyTorch does not match the device (CUDA for gpu, none for cpu);
# the labels mixmicrobleednet.torch.version / .cuda say what is inside. The wheelhouse is served on
# 127.0.0.1:${MIXMICROBLEEDNET_WHEEL_PORT:-47365} while the build runs (the build shares the host's
# network for that; nothing else is fetched). The replaced image of the same tag is removed, so
# rebuilding does not fill the disk.
set -euo pipefail
cd "$(dirname "$0")"
device=gpu offline=0 wheelhouse="" tag=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) device=cpu ;;
    --offline) offline=1 ;;
    --wheelhouse) wheelhouse=${2:?}; shift ;;
    --tag) tag=${2:?}; shift ;;
    *) echo "usage: $0 [--cpu] [--offline] [--wheelhouse cpu|gpu] [--tag TAG]" >&2; exit 2 ;;
  esac
  shift
done
compgen -G "models/*/plans.json" > /dev/null || { echo "models/ holds no model folder (models/*/plans.json missing)" >&2; exit 1; }
gpus=1 gpu_memory=4G
if [ "$device" = cpu ]; then gpus=0 gpu_memory=0G; fi
[ -n "$tag" ] || { [ "$device" = cpu ] && tag=mixmicrobleednet:cpu || tag=mixmicrobleednet:latest; }
wheelhouse=${wheelhouse:-$device}
scripts/wheelhouse.sh "$wheelhouse"
# The atlases for microbleed regions go into the image from Debian's mricron-data (not committed).
rm -rf build/atlas && scripts/mricron-data.sh build/atlas
read -r torch_version torch_cuda < "wheelhouse/$wheelhouse/TORCH"
port=${MIXMICROBLEEDNET_WHEEL_PORT:-47365}
python3 -m http.server "$port" --bind 127.0.0.1 --directory "wheelhouse/$wheelhouse" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/TORCH')" 2>/dev/null && break
  sleep 0.2
done
# A server that died had no port: another program holds it and would answer in its place.
kill -0 "$server" 2>/dev/null \
  || { echo "port $port is taken: set MIXMICROBLEEDNET_WHEEL_PORT to a free one" >&2; exit 1; }
args=(--network host --force-rm --build-arg WHEELS="http://127.0.0.1:$port/"
      --build-arg DEVICE="$device" --build-arg GPU_COUNT="$gpus" --build-arg GPU_MEMORY="$gpu_memory"
      --build-arg TORCH_VERSION="$torch_version" --build-arg TORCH_CUDA="$torch_cuda" --build-arg IMAGE_TAG="$tag" -t "$tag")
if [ "$offline" = 1 ]; then args+=(--build-arg BASE_IMAGE="$(scripts/offline-base.sh)"); fi
# The classic builder where BuildKit (buildx) is not installed.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
docker build "${args[@]}" .
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true  # still used by a container or another tag: kept
fi
echo "built $tag (torch $torch_version, CUDA $torch_cuda)"
