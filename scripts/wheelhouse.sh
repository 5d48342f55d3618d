#!/usr/bin/env bash
# Fill wheelhouse/ with every wheel the image needs, so `docker build` installs with no network.
# Usage: scripts/wheelhouse.sh cpu|gpu   (cpu: torch's CPU build; gpu: PyPI's CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:?cpu or gpu}
if [ -f wheelhouse/DEVICE ] && [ "$(cat wheelhouse/DEVICE)" = "$device" ] \
   && [ "$(cat wheelhouse/REQUIREMENTS_SHA 2>/dev/null)" = "$(sha256sum requirements.txt | cut -d' ' -f1)" ]; then
  exit 0
fi
find wheelhouse -mindepth 1 ! -name .keep -delete
pip=(python3 -m pip download -q --disable-pip-version-check --only-binary=:all: -d wheelhouse)
if [ "$device" = cpu ]; then
  # torch==2.13.0+cpu comes from pip's configured find-links (/opt/wheels on our machines); elsewhere
  # run with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
  "${pip[@]}" "torch==2.13.0+cpu"
else
  PIP_FIND_LINKS="" "${pip[@]}" "torch==2.13.0"
fi
# pip wheel: packages published only as source get built here, once, on the host.
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w wheelhouse -r <(grep -v '^torch==' requirements.txt) 
echo "$device" > wheelhouse/DEVICE
sha256sum requirements.txt | cut -d' ' -f1 > wheelhouse/REQUIREMENTS_SHA
