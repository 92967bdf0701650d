#!/usr/bin/env bash
# Meta-train the shipped learners with the same budget: Omniglot-mini meta-train alphabets,
# 20-task 5-shot episodes (5 query shots), the same steps, batch, learning rate and selectivity weight.
# Runs the four trainings side by side on one GPU (or the CPU: set DEVICE=cpu and fewer STEPS).
#   STEPS=6000 BATCH=32 OUTDIR=checkpoints bash checkpoints/train_shipped.sh
# MODELS picks some of them (default: all five); the shipped ones all stopped at 4,998 steps.
# RESUME=1 continues each from its checkpoint in OUTDIR (up to the new STEPS); FORCE=1 replaces them
# (without either, an existing checkpoint in OUTDIR is refused).
set -euo pipefail
STEPS=${STEPS:-6000}
BATCH=${BATCH:-32}
LR=${LR:-1e-3}
LAMBDA=${LAMBDA:-0.5}
PRETRAIN=${PRETRAIN:-300}
FROZEN=${FROZEN:-5400}
DEVICE=${DEVICE:-auto}
OUTDIR=${OUTDIR:-checkpoints}
LOGDIR=${LOGDIR:-$OUTDIR}
PYTHON=${PYTHON:-python3}
extra=()
[ "${RESUME:-0}" = "1" ] && extra+=(--resume)
[ "${FORCE:-0}" = "1" ] && extra+=(--force)
[ -n "${MAX_MINUTES:-}" ] && extra+=(--max-minutes "$MAX_MINUTES")
mkdir -p "$OUTDIR" "$LOGDIR"
common=(--dataset omniglot-mini --tasks 20 --shots 5 --test-shots 5 --steps "$STEPS" --batch-size "$BATCH"
        --lr "$LR" --lr-halve-every 3000 --warmup 200 --slct-lambda "$LAMBDA" --pretrain-steps "$PRETRAIN" --frozen-encoder-steps "$FROZEN" --d-model 128 --layers 4 --y-vocab 100
        --encoder-channels 32 --device "$DEVICE" --checkpoint-every 250 --log-every 50 --seed 0)
pids=()
for model in ${MODELS:-mamba transformer linear_transformer performer longhorn}; do
  heads=()
  case "$model" in mamba|longhorn) ;; *) heads=(--heads 4 --d-ff 256) ;; esac
  "$PYTHON" -m mclstudio train --model "$model" "${common[@]}" "${heads[@]}" "${extra[@]}" \
    -o "$OUTDIR/$model.pt" >"$LOGDIR/train_$model.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
