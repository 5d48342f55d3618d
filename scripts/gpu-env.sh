# Sourced by the scripts/gpu-*.sh run on a lent GPU machine: unpacks the carried bundle
# (scripts/gpu-bundle.sh) beside the machine's own CUDA PyTorch, points Python and the package's
# atlas folder at it, and prints the GPU and torch versions. Sets $out (where results come back).
site=$(mktemp -d)
xz -dc .gpu/site-packages.tar.xz | tar -C "$site" -xf -
export PYTHONPATH="$PWD/src:$site" MPLCONFIGDIR=/tmp/matplotlib MIXMICROBLEEDNET_ATLAS_DIR="$site/mricron-templates" \
  PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
gpu_versions() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.get_num_threads(), 'threads')"
}
