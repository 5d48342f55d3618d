#!/usr/bin/env bash
# Pack what the scripts/gpu-*.sh need beyond a GPU machine's own Python 3.12 with CUDA PyTorch
# (the `device` machines lent to us: no registry there, at most 64 MiB carried) into
# .gpu/site-packages.tar.xz: our pinned nnU-Net stack, SimpleITK (debug symbols stripped), nilearn
# (the phantoms' template), deepbet with its weights (raw heads in training data), without their
# test folders, and in mricron-templates/ the atlases of Debian's mricron-data that phantoms and
# regions read (layout.ATLAS_FILES; 1.5 MB). Then scripts/gpu-check.sh, gpu-cohort.sh or
# gpu-train.sh runs there. A call carries at most 64 MiB with the tracked tree, so the bundle comes in
# two parts, SimpleITK (.gpu/site-packages-1.tar.xz) and the rest (-2): a first call carries part 1
# and unpacks it (`bash scripts/gpu-env.sh`) into .gpu/site, which a warm machine keeps (ignored),
# and the next call, while the machine is warm, carries part 2 and runs the script.
set -euo pipefail
cd "$(dirname "$0")/.."
pins() { for name in "$@"; do grep -i "^$name==" requirements.txt; done; }
rm -rf .gpu/wheels .gpu/site && mkdir -p .gpu/wheels .gpu/site
pip=(python3 -m pip -q --disable-pip-version-check)
"${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/wheels $(pins simpleitk connected-components-3d fill_voids blosc2 ndindex \
  numexpr)
"${pip[@]}" wheel --no-deps -w .gpu/wheels $(pins nnunetv2 acvl_utils dynamic_network_architectures batchgenerators \
  batchgeneratorsv2 nibabel deepbet) "nilearn==$(sed -n 's/.*"nilearn==\([^"]*\)".*/\1/p' pyproject.toml | head -1)"
for wheel in .gpu/wheels/*.whl; do python3 -m zipfile -e "$wheel" .gpu/site; done
strip --strip-unneeded .gpu/site/SimpleITK/_SimpleITK*.so
mkdir .gpu/site/mricron-templates
PYTHONPATH=src python3 -c "from mixmicrobleednet import layout; print(*layout.ATLAS_FILES.values(), sep='\n')" \
  | while read -r name; do cp "${MIXMICROBLEEDNET_ATLAS_DIR:-/usr/share/mricron/templates}/$name" .gpu/site/mricron-templates/; done
rm -f .gpu/site-packages*.tar.xz
tar -C .gpu/site -cf - SimpleITK | xz -T0 -6 > .gpu/site-packages-1.tar.xz
tar -C .gpu/site --exclude='*/tests' --exclude='*/__pycache__' --exclude=./SimpleITK -cf - . \
  | xz -T0 -6 > .gpu/site-packages-2.tar.xz
rm -rf .gpu/wheels .gpu/site
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
for part in .gpu/site-packages-*.tar.xz; do
  size=$(stat -c %s "$part")
  echo "$part: $((size >> 20)) MiB, with the tracked tree $(((size + tree) >> 20)) MiB of the 64 MiB a call carries"
  [ $((size + tree)) -le $((64 << 20)) ] || echo "  too large: carry less or track less" >&2
done
