#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io when missing, start dockerd when
# none runs (flags for machines without iptables or a bridge, as in our CI).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi
if ! docker info >/dev/null 2>&1; then
  # pid files left by a daemon that was killed (a previous session) stop a new one from starting
  for pidfile in /var/run/docker.pid /run/containerd/containerd.pid; do
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then rm -f "$pidfile"; fi
  done
  nohup dockerd --iptables=false --ip-masq=false --bridge=none --storage-driver=overlay2 >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || { echo "Docker engine did not start; see /tmp/dockerd.log" >&2; exit 1; }
