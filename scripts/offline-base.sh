#!/usr/bin/env bash
# Build the offline base image (Debian bookworm + python3) with debootstrap: for machines that
# cannot pull from an image registry. Prints the image name.
set -euo pipefail
name=${1:-mixmicrobleednet-base:bookworm}
if docker image inspect "$name" >/dev/null 2>&1; then echo "$name"; exit 0; fi
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
fi
root=$(mktemp -d /tmp/mixmicrobleednet-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >&2
tar -C "$root" -c . | docker import - "$name" >&2
echo "$name"
