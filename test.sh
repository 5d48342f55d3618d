#!/usr/bin/env bash
# Build the CPU and the GPU image offline and run them on the shipped test case, the CPU image in
# both input layouts (the seed's test/input and Grand-Challenge's test/platform/input), the way
# Grand-Challenge runs algorithms: no network, read-only root filesystem and input, non-root. Exit
# non-zero on any difference from test/expected/ and test/platform/expected/, or between the two
# layouts' masks, or when the GPU image on this GPU-less machine does not fall back to the CPU with
# the CPU image's mask, or does not stop with exit code 2 when --device cuda is asked for.
#   ./test.sh            build (scripts/: Docker engine, base image, wheelhouses) and test
#   ./test.sh --no-build test the images already built
set -euo pipefail
cd "$(dirname "$0")"
scripts/docker-engine.sh
scripts/setup-venv.sh  # so .venv/bin/mixmicrobleednet works after the main job too
[ "${1:-}" = --no-build ] || { ./build.sh --cpu --offline && ./build.sh --offline; }
image=mixmicrobleednet:cpu
out=$(mktemp -d /tmp/mixmicrobleednet-test.XXXXXX)
trap 'rm -rf "$out"' EXIT
chmod 755 "$out"
mkdir -m 777 "$out/seed" "$out/platform" "$out/gpu-image"  # the image's non-root user writes here
locked=(--rm --network none --read-only --tmpfs /tmp --security-opt no-new-privileges)
check=(docker run "${locked[@]}" -v "$PWD/test:/test:ro" -v "$out:/output:ro" --entrypoint python "$image"
       -m mixmicrobleednet.regression)
# --fast (no mirroring): on 2 CPU cores the 8 mirrored passes take several minutes per case.
echo "== seed layout: $image on test/input"
docker run "${locked[@]}" -v "$PWD/test/input:/input:ro" -v "$out/seed:/output" "$image" --fast
"${check[@]}" /test/expected /output/seed
echo "== Grand-Challenge layout: $image on test/platform/input, model tarball mounted at /opt/ml/model"
docker run "${locked[@]}" -v "$PWD/test/platform/input:/input:ro" -v "$out/platform:/output" \
  -v "$PWD/models/phantom-t1-t2-t2s:/opt/ml/model:ro" "$image" --fast 2>&1 | tee "$out/platform.log"
grep -q "provided at /opt/ml/model, used instead of the baked-in" "$out/platform.log" \
  || { echo "the model at /opt/ml/model was not used" >&2; exit 1; }
"${check[@]}" /test/platform/expected /output/platform
echo "== the two layouts give the same mask"
"${check[@]}" --identical-masks /output/seed/images/sub-s5c000_space-T2S_prediction.nii.gz \
  /output/platform/images/cerebral-microbleed-segmentation/output.mha
echo "== the GPU image on a machine without a GPU: mixmicrobleednet:latest on test/input"
docker run "${locked[@]}" -v "$PWD/test/input:/input:ro" -v "$out/gpu-image:/output" mixmicrobleednet:latest --fast \
  2>&1 | tee "$out/gpu-image.log"
grep -q "device: cpu (no CUDA GPU visible" "$out/gpu-image.log" \
  || { echo "the GPU image did not say that it fell back to the CPU" >&2; exit 1; }
"${check[@]}" /test/expected /output/gpu-image
"${check[@]}" --identical-masks /output/seed/images/sub-s5c000_space-T2S_prediction.nii.gz \
  /output/gpu-image/images/sub-s5c000_space-T2S_prediction.nii.gz
echo "== the GPU image with --device cuda and no GPU: exit code 2 before any case"
code=0
docker run "${locked[@]}" -v "$PWD/test/input:/input:ro" -v "$out/gpu-image:/output" mixmicrobleednet:latest \
  --device cuda > "$out/cuda.log" 2>&1 || code=$?
cat "$out/cuda.log"
[ "$code" = 2 ] && grep -q "PyTorch sees no CUDA GPU" "$out/cuda.log" \
  || { echo "--device cuda without a GPU: exit code $code, expected 2 and a clear message" >&2; exit 1; }
echo "test.sh: passed"
