#!/usr/bin/env bash
# The GPU measurements the last session could not make, in one device call (about 8 minutes of an H200):
#   run(command="bash benchmarks/device_pending.sh", carry=[".whl", ".pydeps"])
# .whl holds the sm_90 mamba_ssm wheel as 15 MB parts (mamba_whl.part.*) and .pydeps textual's wheels
# (ignored folders, see benchmarks/build_mamba_ssm.sh). Each step has its own time limit, so a slow one
# cannot take the others' time; everything lands in $OUT (at most 8 files come back).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
mkdir -p /tmp/w "$out"
if ls .whl/mamba_whl.part.* >/dev/null 2>&1; then
  cat .whl/mamba_whl.part.* > /tmp/w/mamba_ssm-2.2.6.post3-cp312-cp312-linux_x86_64.whl
else
  # A fresh checkout has only the sdist (setup.py cut to sm_90): build the wheel (about 3 minutes) and
  # send it back in parts for the next call.
  (cd .whl/mamba_ssm-2.2.6.post3 && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=16 python3 -m pip wheel -q \
     --no-build-isolation --no-deps . -w /tmp/built) > "$out/build.log" 2>&1 || exit 1
  cp /tmp/built/mamba_ssm-*.whl /tmp/w/mamba_ssm-2.2.6.post3-cp312-cp312-linux_x86_64.whl
  (cd "$out" && split -b 15M /tmp/w/mamba_ssm-*.whl mamba_whl.part.)
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/w/*.whl .pydeps/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
# With two GPUs, the training-speed run has GPU 0 to itself and the other three share GPU 1 meanwhile;
# with one, they run one after another.
second=0
[ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -gt 1 ] && second=1
# 1. Training speed after the host-wait removal and Longhorn's dynamic compiled transition (issue 15).
CUDA_VISIBLE_DEVICES=0 timeout 330 python3 benchmarks/train_speed.py --larger-batches 256 --out "$out/train_speed.json" 2>&1 \
  | grep -v -e profiler -e '^W1' | cut -c1-200 > "$out/train_speed.log" &
speed=$!
[ "$second" = 0 ] && wait $speed
export CUDA_VISIBLE_DEVICES=$second
# 2. Longhorn's fast path against the reference with its compiled transition (issue 15).
timeout 100 python3 benchmarks/train_agreement.py --models longhorn --out "$out/train_agreement_longhorn_h200.json" >/dev/null 2>&1
# 3. The studio with the models in a child process, five learners and Mamba alone (issue 17).
timeout 100 python3 benchmarks/tui_fps.py --device cuda --worker both --seconds 8 --repeats 1 \
  --out "$out/tui_fps_h200_worker.json" >/dev/null 2>&1
# 4. The anytime objective's cost on the GPU (never timed there).
timeout 90 python3 benchmarks/anytime_step.py --out "$out/anytime_step_h200.json" >/dev/null 2>&1
wait $speed
[ -f "$out/build.log" ] && ls "$out"/mamba_whl.part.* >/dev/null 2>&1 && rm "$out/build.log"
ls -l "$out"
