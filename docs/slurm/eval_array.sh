#!/bin/bash
#SBATCH --array=0-15 --cpus-per-task=8 --time=12:00:00
# One array task per shard of the data set. Each task resumes its own shard folder, so a requeued or
# preempted task picks up where it stopped (and a second copy of it is refused by the folder's lock).
# Afterwards: xaiclip eval --merge results/shard-* --out results/all
XAICLIP=${XAICLIP:-xaiclip}
DATA=${DATA:-/data/FLARE22}
OUT=${OUT:-results}
EVAL_ARGS=${EVAL_ARGS:---organs liver,spleen,right-kidney,left-kidney --methods occlusion,rise,lime,kernelshap --roi none,clip --slices every-5}
# shellcheck disable=SC2086 # EVAL_ARGS is a list of options
exec "$XAICLIP" eval --dataset flare22 "$DATA" $EVAL_ARGS \
  --shard $((SLURM_ARRAY_TASK_ID + 1))/"$SLURM_ARRAY_TASK_COUNT" --out "$OUT/shard-$SLURM_ARRAY_TASK_ID" --resume
