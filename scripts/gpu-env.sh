# Sourced by the scripts/gpu-*.sh run on a lent GPU machine: unpacks the carried part of the bundle
# (scripts/gpu-bundle.sh) into .gpu/site, where a warm machine keeps it between calls, beside the
# machine's own CUDA PyTorch, points Python and the package's atlas folder at it, and prints the GPU
# and torch versions. Sets $out (where results come back). Run alone, it unpacks part 1.
site=$PWD/.gpu/site
mkdir -p "$site"
for part in .gpu/site-packages-*.tar.xz; do
  [ -f "$part" ] && xz -dc "$part" | tar -C "$site" -xf - && echo "unpacked $part"
done
for needed in SimpleITK nnunetv2; do
  [ -d "$site/$needed" ] || echo "$site has no $needed: carry .gpu/site-packages-1.tar.xz (SimpleITK) in one" \
    "call and .gpu/site-packages-2.tar.xz in the next, while the machine is warm (scripts/gpu-bundle.sh)" >&2
done
export PYTHONPATH="$PWD/src:$site" MPLCONFIGDIR=/tmp/matplotlib MIXMICROBLEEDNET_ATLAS_DIR="$site/mricron-templates" \
  PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
gpu_versions() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.get_num_threads(), 'threads')"
}
