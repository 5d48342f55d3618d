#!/usr/bin/env bash
# Build the CPU image offline and run it on the shipped test case, in both input layouts (the seed's
# test/input and Grand-Challenge's test/platform/input), the way Grand-Challenge runs algorithms: no
# network, read-only root filesystem and input, non-root. Exit non-zero on any difference from
# test/expected/ and test/platform/expected/, or between the two layouts' masks.
#   ./test.sh            build (scripts/: Docker engine, base image, wheelhouse) and test
#   ./test.sh --no-build test the image already built
set -euo pipefail
cd "$(dirname "$0")"
scripts/docker-engine.sh
scripts/setup-venv.sh  # so .venv/bin/mixmicrobleednet works after the main job too
[ "${1:-}" = --no-build ] || ./build.sh --cpu --offline
image=mixmicrobleednet:cpu
out=$(mktemp -d /tmp/mixmicrobleednet-test.XXXXXX)
trap 'rm -rf "$out"' EXIT
chmod 755 "$out"
mkdir -m 777 "$out/seed" "$out/platform"  # the image's non-root user writes here
locked=(--rm --network none --read-only --tmpfs /tmp --security-opt no-new-privileges)
check=(docker run "${locked[@]}" -v "$PWD/test:/test:ro" -v "$out:/output:ro" --entrypoint python "$image"
       -m mixmicrobleednet.regression)
# --fast (no mirroring): on 2 CPU cores the 8 mirrored passes take several minutes per case.
echo "== seed layout: $image on test/input"
docker run "${locked[@]}" -v "$PWD/test/input:/input:ro" -v "$out/seed:/output" "$image" --fast
"${check[@]}" /test/expected /output/seed
echo "== Grand-Challenge layout: $image on test/platform/input, model tarball mounted at /opt/ml/model"
docker run "${locked[@]}" -v "$PWD/test/platform/input:/input:ro" -v "$out/platform:/output" \
  -v "$PWD/weights:/opt/ml/model:ro" "$image" --fast 2>&1 | tee "$out/platform.log"
grep -q "provided at /opt/ml/model, used instead of the baked-in" "$out/platform.log" \
  || { echo "the model at /opt/ml/model was not used" >&2; exit 1; }
"${check[@]}" /test/platform/expected /output/platform
echo "== the two layouts give the same mask"
"${check[@]}" --identical-masks /output/seed/images/sub-s5c000_space-T2S_prediction.nii.gz \
  /output/platform/images/cerebral-microbleed-segmentation/output.mha
echo "test.sh: passed"
