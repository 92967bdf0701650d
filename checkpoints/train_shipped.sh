#!/usr/bin/env bash
# Meta-train the shipped learners with one recipe: Omniglot-mini meta-train alphabets, the anytime objective
# (each query asked after a random task boundary at or after its task), a distribution of episode shapes
# (1-20 tasks, 1-10 shots per task, uneven; 5 query shots), class-level augmentation, the same batch,
# learning rate, selectivity weight and encoder pre-training (then frozen) for all six learners.
# Runs the trainings side by side: on GPUS=2 three to a GPU, on one GPU all together (or DEVICE=cpu).
#   STEPS=20000 MAX_MINUTES=6.5 OUTDIR=checkpoints FORCE=1 bash checkpoints/train_shipped.sh
# MODELS picks some of them (default: all six). STEPS and MAX_MINUTES bound each run; whichever comes
# first ends it, with a checkpoint. RESUME=1 continues each from its checkpoint in OUTDIR; FORCE=1
# replaces them (without either, an existing checkpoint in OUTDIR is refused).
set -euo pipefail
STEPS=${STEPS:-20000}
BATCH=${BATCH:-32}
LR=${LR:-1e-3}
LAMBDA=${LAMBDA:-0.5}
PRETRAIN=${PRETRAIN:-300}
FROZEN=${FROZEN:-100000}
DEVICE=${DEVICE:-auto}
GPUS=${GPUS:-1}
OUTDIR=${OUTDIR:-checkpoints}
LOGDIR=${LOGDIR:-$OUTDIR}
PYTHON=${PYTHON:-python3}
extra=()
[ "${RESUME:-0}" = "1" ] && extra+=(--resume)
[ "${FORCE:-0}" = "1" ] && extra+=(--force)
[ -n "${MAX_MINUTES:-}" ] && extra+=(--max-minutes "$MAX_MINUTES")
mkdir -p "$OUTDIR" "$LOGDIR"
common=(--dataset omniglot-mini --tasks 20 --shots 5 --test-shots 5 --tasks-range 1:20 --shots-range 1:10 --augment
        --objective anytime --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --lr-halve-every 3000 --warmup 200
        --slct-lambda "$LAMBDA" --pretrain-steps "$PRETRAIN" --frozen-encoder-steps "$FROZEN" --d-model 128 --y-vocab 100
        --encoder-channels 32 --device "$DEVICE" --checkpoint-every 250 --log-every 50 --seed 0)
pids=()
index=0
for model in ${MODELS:-mamba transformer linear_transformer performer longhorn protonet}; do
  sizes=(--layers 4)
  case "$model" in
    mamba|longhorn) ;;
    protonet) sizes=() ;;  # no sequence model: the encoder and per-code sums
    *) sizes+=(--heads 4 --d-ff 256) ;;
  esac
  gpu=()
  [ "$GPUS" -gt 1 ] && gpu=(env CUDA_VISIBLE_DEVICES=$((index % GPUS)))
  "${gpu[@]}" "$PYTHON" -m mclstudio train --model "$model" "${common[@]}" "${sizes[@]}" "${extra[@]}" \
    -o "$OUTDIR/$model.pt" --log-file "$LOGDIR/train_$model.jsonl" >"$LOGDIR/train_$model.log" 2>&1 &
  pids+=($!)
  index=$((index + 1))
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
