#!/usr/bin/env bash
# Debian's chromium for the browser tier (tests/test_review.py drives it with Playwright as
# /usr/bin/chromium: no browser download). Installed when missing, as root. Idempotent.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2
fi
