#!/usr/bin/env bash
# Create or update .venv-nnunetv1/: nnU-Net v1 (unmaintained, kept apart from our environment) for the
# tests that check `mixmicrobleednet import-v1` against v1's own network and inference.
# Idempotent: does nothing when tests/nnunetv1/requirements.txt is unchanged since last time.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-nnunetv1
stamp=$venv/.setup
want=$(sha256sum tests/nnunetv1/requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
python3 -m venv "$venv"
# torch first and pinned: an unpinned torch would pull the CUDA build (several GB).
"$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r tests/nnunetv1/requirements.txt
echo "$want" > "$stamp"
