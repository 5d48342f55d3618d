#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: .venv/, Colin27 (mricron-data), chromium, dciodvfy (dicom3tools),
# Docker engine, offline CPU image, then
#   1. test.sh: the image on the shipped test case, locked down, against test/expected/
#   2. pytest: unit tests, slow end-to-end tests (the wheel, installed outside the checkout, among them) and the
#      container tests
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh
scripts/mricron-data.sh
scripts/chromium.sh  # the browser tier: the review app in a real browser
scripts/dicom3tools.sh  # the DICOM validator for the outputs for PACS
./test.sh
.venv/bin/python -m pytest -v -ra -m "" "$@"  # every tier (a plain pytest runs unit and model only)
