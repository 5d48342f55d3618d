#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (the cluster test tier; also a way to try the
# README's job scripts): Debian's slurm-wlm and munge, installed when missing, slurmctld and slurmd
# on localhost, one partition `debug` with all of this machine's CPUs and memory. Run as root.
# Idempotent: exits 0 at once when a cluster answers with a node ready. Leaves alone a slurm.conf
# that this script did not write. Logs: /var/log/slurm/. Stop: scripts/slurm-cluster.sh --stop
set -euo pipefail
marker="# written by mixmicrobleednet scripts/slurm-cluster.sh"
conf=/etc/slurm/slurm.conf

if [ "${1:-}" = --stop ]; then
  pkill -x slurmd || true; pkill -x slurmctld || true
  exit 0
fi

ready() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
if command -v sinfo >/dev/null 2>&1 && ready; then exit 0; fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi

if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
  echo "$conf exists and was not written by this script; start that cluster, or move the file away" >&2
  exit 1
fi

# munge: the key (the package makes one; not on every install) and the daemon, as user munge.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
fi

# slurm.conf from what slurmd finds on this machine (CPUs, cores, memory).
node=$(slurmd -C | head -1)
host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$conf" <<EOF
$marker
ClusterName=mixmicrobleednet
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
DefMemPerCPU=2048
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do ready && break; sleep 1; done
if ! ready; then
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 2
fi
ready || { echo "SLURM did not come up; see /var/log/slurm/" >&2; sinfo -N >&2 || true; exit 1; }
sinfo -N
