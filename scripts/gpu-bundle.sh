#!/usr/bin/env bash
# Pack what benchmarks/gpu_check.py needs beyond a GPU machine's own Python 3.12 with CUDA PyTorch
# (the `device` machines lent to us: no registry there, at most 64 MiB carried) into
# .gpu/site-packages.tar.xz: our pinned nnU-Net stack, SimpleITK (debug symbols stripped), nilearn
# (the phantoms' template), without their test folders, and in mricron-templates/ the atlases of
# Debian's mricron-data that phantoms and regions read (layout.ATLAS_FILES; 1.5 MB). Then
# scripts/gpu-check.sh or scripts/gpu-cohort.sh runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
pins() { for name in "$@"; do grep -i "^$name==" requirements.txt; done; }
rm -rf .gpu/wheels .gpu/site && mkdir -p .gpu/wheels .gpu/site
pip=(python3 -m pip -q --disable-pip-version-check)
"${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/wheels $(pins simpleitk connected-components-3d blosc2 ndindex numexpr)
"${pip[@]}" wheel --no-deps -w .gpu/wheels $(pins nnunetv2 acvl_utils dynamic_network_architectures batchgenerators \
  batchgeneratorsv2 nibabel) "nilearn==$(sed -n 's/.*"nilearn==\([^"]*\)".*/\1/p' pyproject.toml | head -1)"
for wheel in .gpu/wheels/*.whl; do python3 -m zipfile -e "$wheel" .gpu/site; done
strip --strip-unneeded .gpu/site/SimpleITK/_SimpleITK*.so
mkdir .gpu/site/mricron-templates
PYTHONPATH=src python3 -c "from mixmicrobleednet import layout; print(*layout.ATLAS_FILES.values(), sep='\n')" \
  | while read -r name; do cp "${MIXMICROBLEEDNET_ATLAS_DIR:-/usr/share/mricron/templates}/$name" .gpu/site/mricron-templates/; done
tar -C .gpu/site --exclude='*/tests' --exclude='*/__pycache__' -cf - . | xz -T0 -6 > .gpu/site-packages.tar.xz
rm -rf .gpu/wheels .gpu/site
ls -l .gpu/site-packages.tar.xz
