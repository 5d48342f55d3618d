#!/usr/bin/env bash
# Debian's mricron-data (under /usr/share/mricron/templates): the Colin27 head and brain (ch2, ch2bet)
# for the anatomy tests and the raw phantoms, and the MNI atlases microbleed regions are found with
# (aal, JHU-WhiteMatter-labels-1mm; regions.py). Installed when missing, never committed. Idempotent.
#   scripts/mricron-data.sh            install (root) when missing
#   scripts/mricron-data.sh DIR        also copy the atlas files and Debian's copyright file into DIR (build.sh: the image)
set -euo pipefail
templates=/usr/share/mricron/templates
files=(ch2bet.nii.gz aal.nii.gz JHU-WhiteMatter-labels-1mm.nii.gz)
missing=0
for f in ch2.nii.gz "${files[@]}"; do [ -f "$templates/$f" ] || missing=1; done
if [ "$missing" = 1 ]; then
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mricron-data >&2
fi
if [ $# -gt 0 ]; then
  mkdir -p "$1"
  for f in "${files[@]}"; do cp "$templates/$f" "$1/"; done
  cp /usr/share/doc/mricron-data/copyright "$1/copyright"
fi
