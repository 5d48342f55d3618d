#!/usr/bin/env bash
# Fill wheelhouse/<cpu|gpu>/ with every wheel the image needs, so `docker build` installs with no
# network; each device keeps its own folder, a cache reused while requirements.txt is unchanged.
#   scripts/wheelhouse.sh cpu|gpu   cpu: torch's CPU build; gpu: PyPI's CUDA build and its CUDA libraries
# Writes wheelhouse/<device>/TORCH: "<torch version> <CUDA version or none>", read from the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:?cpu or gpu}
folder=wheelhouse/$device
stamp=$(sha256sum requirements.txt scripts/wheelhouse.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$folder/STAMP" 2>/dev/null)" = "$stamp" ]; then exit 0; fi
rm -rf "$folder" && mkdir -p "$folder"
pins=$(mktemp) && trap 'rm -f "$pins"' EXIT
grep -v '^torch==' requirements.txt > "$pins"
pip=(python3 -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$folder")
if [ "$device" = cpu ]; then
  # torch==2.13.0+cpu comes from pip's configured find-links (/opt/wheels on our machines); elsewhere
  # run with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
  "${pip[@]}" --no-deps "torch==2.13.0+cpu"
else
  # `===` matches the version string exactly: a local CPU build (2.13.0+cpu) in pip's find-links or
  # cache satisfies `==2.13.0` (PEP 440) but not this. With its dependencies: the CUDA libraries.
  PIP_FIND_LINKS="" "${pip[@]}" -c "$pins" "torch===2.13.0"
fi
# pip wheel: packages published only as source get built here, once, on the host.
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$folder" -r "$pins"
python3 - "$folder" > "$folder/TORCH" <<'PY'
import re, sys, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("torch-*.whl"))
version = wheel.name.split("-")[1]
metadata = zipfile.ZipFile(wheel).read(f"torch-{version}.dist-info/METADATA").decode()
# CUDA 13 builds require cuda-toolkit[...]==13.0.x, CUDA 12 builds nvidia-cuda-runtime-cu12==12.x.
cuda = re.search(r"^Requires-Dist: (?:cuda-toolkit\[[^]]*\]|nvidia-cuda-runtime(?:-cu\d+)?)==(\d+\.\d+)", metadata, re.M)
print(version, cuda.group(1) if cuda else "none")
PY
echo "$stamp" > "$folder/STAMP"
echo "$folder: torch $(cat "$folder/TORCH")"
