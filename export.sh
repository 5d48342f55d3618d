#!/usr/bin/env bash
# Write what Grand-Challenge (or an air-gapped site) needs to upload.
#   ./export.sh [--cpu] [--offline] [--model-tarball [NAME]]
#     image tarball mixmicrobleednet-latest.tar.gz (or -cpu), built with build.sh's flags;
#     --model-tarball: also mixmicrobleednet-model.tar.gz, the shipped model NAME (models/NAME,
#     default phantom-t1-t2-t2s) for the algorithm's "Models" page (the platform extracts it to
#     /opt/ml/model, which then wins over the baked-in models)
set -euo pipefail
cd "$(dirname "$0")"
build_args=() model_tarball=0 model=phantom-t1-t2-t2s
while [ $# -gt 0 ]; do
  if [ "$1" = --model-tarball ]; then
    model_tarball=1
    if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then model=$2; shift; fi
  else build_args+=("$1"); fi
  shift
done
[ "$model_tarball" = 0 ] || [ -f "models/$model/plans.json" ] || { echo "models/$model is no model folder" >&2; exit 2; }
./build.sh "${build_args[@]}"
tag=mixmicrobleednet:latest
for arg in "${build_args[@]}"; do [ "$arg" = --cpu ] && tag=mixmicrobleednet:cpu; done
out="mixmicrobleednet-${tag#*:}.tar.gz"
docker save "$tag" | gzip -c > "$out.partial"
mv "$out.partial" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
if [ "$model_tarball" = 1 ]; then
  # the folder's contents at the tarball's root: plans.json, dataset.json, fold_all/
  tar -czf mixmicrobleednet-model.tar.gz.partial -C "models/$model" plans.json dataset.json fold_all
  mv mixmicrobleednet-model.tar.gz.partial mixmicrobleednet-model.tar.gz
  echo "wrote mixmicrobleednet-model.tar.gz ($(du -h mixmicrobleednet-model.tar.gz | cut -f1))"
fi
