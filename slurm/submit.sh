#!/usr/bin/env bash
# Submit a BIDS dataset to SLURM: one array task per participant, then the group step once all of
# them have ended, however they ended (afterany): a failed participant is a row of cohort.tsv, not a
# group step left pending for ever. Prints the two job ids ("ARRAY_ID GROUP_ID").
#   slurm/submit.sh BIDS_DIR OUTPUT_DIR [mixmicrobleednet options, e.g. --model DIR --fast]
# MIXMICROBLEEDNET_SBATCH: extra sbatch options for both jobs (e.g. "--partition=gpu --gres=gpu:1
# --account=myproject"); MIXMICROBLEEDNET_COMMAND: see participant.sbatch. Logs: OUTPUT_DIR/logs/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bids_dir=$(realpath "${1:?BIDS_DIR}")
output_dir=$(realpath -m "${2:?OUTPUT_DIR}")
shift 2
count=$(find "$bids_dir" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
if [ "$count" -eq 0 ]; then echo "$bids_dir: no sub-* folders" >&2; exit 2; fi
mkdir -p "$output_dir/logs"
# shellcheck disable=SC2086
array=$(sbatch --parsable ${MIXMICROBLEEDNET_SBATCH:-} --array="1-$count" --output="$output_dir/logs/%x_%A_%a.log" \
        "$here/participant.sbatch" "$bids_dir" "$output_dir" "$@")
array=${array%%;*}
# Of the options, the group step needs only the model folder.
group_options=()
while [ $# -gt 0 ]; do
  case $1 in
    --model) group_options=(--model "$2"); shift ;;
    --model=*) group_options=("$1") ;;
  esac
  shift
done
# shellcheck disable=SC2086
group=$(sbatch --parsable ${MIXMICROBLEEDNET_SBATCH:-} --dependency="afterany:$array" \
        --output="$output_dir/logs/%x_%j.log" "$here/group.sbatch" "$bids_dir" "$output_dir" "${group_options[@]}")
echo "${array} ${group%%;*}"
