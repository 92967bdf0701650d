#!/usr/bin/env bash
# Issue 16's retraining with rotated embeddings and its ablation, in one call of an nvidia-h200-x2:
#   run(command="bash benchmarks/device_retrain.sh", carry=[".whl"], kind="nvidia-h200-x2")
# (the wheel and the working tree are over the 64 MiB a call carries: move a tracked file the call does
# not need, such as recordings/run.h5, out of the tree for the call; see device_pending.sh)
# Every sequence learner starts from its stage 1 checkpoint (--init-from; the encoder stays frozen) and
# meta-trains for TRAIN_MIN minutes on 40-task streams (1-10 uneven shots, the anytime objective) with a
# random rotation of its embeddings in every episode (--rotate-embeddings 1). Controls: Mamba and the
# Transformer without rotation, and Mamba with half its episodes rotated, under the same recipe and clock.
# Four runs share each GPU, each with 3 CPU threads (with torch's default of one per core, eight
# trainings on 32 cores spun against each other). Then every run's `eval --grid`. What comes back ($OUT,
# at most 8 files): the checkpoints as a tar in 15 MB parts, and one .tgz of logs and grids. A watchdog
# stops the trainings (each saves first) and the grids in time for that, DEADLINE seconds after the start.
# START_DIR holds each run's starting weights as NAME.pt or MODEL.pt (default checkpoints/previous/, stage 1);
# RUNS picks runs by name (default all); LR, HALVE (the schedule), THREADS (per run) and GRID_EPISODES
# change the defaults above.
# Stage 3 (the shipped files; one nvidia-h200), from stage 2's checkpoints, was two calls:
#   START_DIR=checkpoints TRAIN_MIN=6 DEADLINE=575 THREADS=2 LR=3e-4 HALVE=1000 \
#     RUNS="mamba_aug transformer_aug linear_transformer_aug performer_aug longhorn_aug mamba_cont transformer_cont"
# then, from the augmented runs' weights (without their optimizer state) saved as START_DIR/<name>.pt:
#   START_DIR=... TRAIN_MIN=5 DEADLINE=480 THREADS=3 LR=1.5e-4 HALVE=1000 GRID_EPISODES=64 \
#     RUNS="mamba_aug transformer_aug linear_transformer_aug performer_aug longhorn_aug"
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${THREADS:-3}
started=$SECONDS
DEADLINE=${DEADLINE:-540}
START_DIR=${START_DIR:-checkpoints/previous}
out=${OUT:-/tmp/out}
run_dir=/tmp/retrain
mkdir -p "$run_dir"
source benchmarks/device_wheel.sh  # the mamba_ssm wheel
gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())')
TRAIN_MIN=${TRAIN_MIN:-5.5}
common=(--dataset omniglot-mini --tasks 40 --shots 5 --test-shots 5 --shots-range 1:10 --objective anytime
        --steps 100000 --batch-size 32 --lr "${LR:-5e-4}" --lr-halve-every "${HALVE:-1500}" --warmup 100 --slct-lambda 0.5
        --pretrain-steps 0 --frozen-encoder-steps 100000 --d-model 128 --y-vocab 100 --encoder-channels 32
        --layers 4 --checkpoint-every 250 --log-every 50 --seed 0 --max-minutes "$TRAIN_MIN")
# name model rotated-share gpu augment
runs=("mamba mamba 1 0 0" "transformer transformer 1 0 0" "mamba_norot mamba 0 0 0" "transformer_norot transformer 0 0 0"
      "linear_transformer linear_transformer 1 1 0" "performer performer 1 1 0" "longhorn longhorn 1 1 0"
      "mamba_halfrot mamba 0.5 1 0" "linear_transformer_norot linear_transformer 0 0 0" "performer_norot performer 0 0 0"
      "longhorn_norot longhorn 0 0 0"
      # stage 3: class-level augmentation of the images (new classes each episode, through the frozen encoder)
      # against plain continued training under the same clock (START_DIR=checkpoints)
      "mamba_aug mamba 0 0 1" "transformer_aug transformer 0 0 1" "linear_transformer_aug linear_transformer 0 0 1"
      "performer_aug performer 0 0 1" "longhorn_aug longhorn 0 0 1" "mamba_cont mamba 0 0 0"
      "transformer_cont transformer 0 0 0")
selected=()
for spec in "${runs[@]}"; do
  read -r name _ <<<"$spec"
  [ -z "${RUNS:-}" ] || [[ " $RUNS " == *" $name "* ]] && selected+=("$spec")
done
runs=("${selected[@]}")
pids=()
for spec in "${runs[@]}"; do
  read -r name model share gpu augment <<<"$spec"
  start=$START_DIR/$name.pt
  [ -f "$start" ] || start=$START_DIR/$model.pt
  sizes=()
  case "$model" in mamba|longhorn) ;; *) sizes=(--heads 4 --d-ff 256) ;; esac
  [ "$augment" = 1 ] && sizes+=(--augment)
  CUDA_VISIBLE_DEVICES=$((gpu % gpus)) python3 -m mclstudio train --model "$model" "${common[@]}" "${sizes[@]}" \
    --rotate-embeddings "$share" --init-from "$start" -o "$run_dir/$name.pt" \
    --log-file "$run_dir/train_$name.jsonl" >"$run_dir/train_$name.log" 2>&1 &
  pids+=($!)
done
# the watchdog: trainings get SIGTERM (they save, then stop) and grids are cut off in time to pack
( sleep $((DEADLINE - (SECONDS - started) - 40)); pkill -TERM -f "mclstudio (train|eval)" ) &
watchdog=$!
for pid in "${pids[@]}"; do wait "$pid"; done
pids=()
index=0
for spec in "${runs[@]}"; do
  read -r name model share gpu augment <<<"$spec"
  if [ -f "$run_dir/$name.pt" ]; then
    CUDA_VISIBLE_DEVICES=$((index % gpus)) timeout $((DEADLINE - (SECONDS - started) - 25)) python3 -m mclstudio eval "$run_dir/$name.pt" --grid \
      --episodes "${GRID_EPISODES:-32}" --json >"$run_dir/grid_$name.json" 2>"$run_dir/grid_$name.err" &
    pids+=($!)
  fi
  index=$((index + 1))
done
for pid in "${pids[@]}"; do wait "$pid"; done
kill $watchdog 2>/dev/null
(cd "$run_dir" && tar cf /tmp/checkpoints.tar ./*.pt && tar czf "$out/logs_and_grids.tgz" ./*.log ./*.jsonl ./*.json ./*.err)
(cd "$out" && split -b 15M /tmp/checkpoints.tar checkpoints.tar.part.)
ls -l "$out"
tail -n 2 "$run_dir"/train_*.log
echo "took $((SECONDS - started)) s"
