#!/usr/bin/env bash
# Real anatomy for the anatomy test tier and benchmarks/registration.py: Debian's mricron-data
# (the Colin27 head ch2.nii.gz and its brain ch2bet.nii.gz under /usr/share/mricron/templates).
# Installed at test time, never committed. Idempotent.
set -euo pipefail
if [ -f /usr/share/mricron/templates/ch2.nii.gz ] && [ -f /usr/share/mricron/templates/ch2bet.nii.gz ]; then exit 0; fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q mricron-data
