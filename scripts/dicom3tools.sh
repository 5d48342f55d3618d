#!/usr/bin/env bash
# Debian's dicom3tools: dciodvfy, the DICOM validator the tests run on our SEG, structured report and
# secondary capture (tests/test_pacs.py). Installed when missing, as root. Idempotent.
set -euo pipefail
if ! command -v dciodvfy > /dev/null; then
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dicom3tools >&2
fi
