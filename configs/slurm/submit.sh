#!/bin/bash
# Submit the explain array and the merge that waits for it; prints the two job ids.
#
#   configs/slurm/submit.sh [sbatch options] ARRAY SCANS OUT [mri-lrp explain options]
#   configs/slurm/submit.sh --partition=gpu 0-7 /data/scans /scratch/$USER/lrp-out --rule alphabeta
#
# Leading options (written --name=value) go to sbatch for both jobs and override the scripts' #SBATCH lines.
set -euo pipefail

sbatch_options=(--parsable)  # never empty: "${a[@]}" of an empty array fails under set -u in old bash
while [ "$#" -gt 0 ] && [[ "$1" == -* ]]; do
    sbatch_options+=("$1")
    shift
done
if [ "$#" -lt 3 ]; then
    echo "usage: submit.sh [sbatch options] ARRAY SCANS OUT [mri-lrp explain options]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
array=$1
out=$3
shift

# MRI_LRP_ARRAY (passed on in the job's environment) records the whole index list, so each task knows its
# shard even when the list is irregular, like 0,4,9.
explain_job=$(MRI_LRP_ARRAY="$array" sbatch "${sbatch_options[@]}" --array="$array" \
    "$here/explain-array.sbatch" "$@")
explain_job=${explain_job%%;*}
merge_job=$(sbatch "${sbatch_options[@]}" --dependency="afterany:$explain_job" \
    "$here/merge.sbatch" "$out")
merge_job=${merge_job%%;*}
echo "explain array job $explain_job, merge job $merge_job"
