#!/usr/bin/env bash
# Create or update .venv/ with the pinned environment and the package (editable) with its extras.
# Idempotent: does nothing when requirements.txt and pyproject.toml are unchanged since last time.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.mixmicrobleednet-setup
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
python3 -m venv .venv
# torch first and pinned: an unpinned torch would pull the CUDA build (several GB).
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
.venv/bin/pip install -q --disable-pip-version-check "nilearn==0.14.1" "pytest==9.2.0" "bids-validator-deno==3.0.2" "playwright==1.65.3"
echo "$want" > "$stamp"
