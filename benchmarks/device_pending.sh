#!/usr/bin/env bash
# The GPU measurements the last session could not make, in one device call (about 8 minutes of an H200):
#   run(command="bash benchmarks/device_pending.sh", carry=[".whl", ".pydeps"])
# .whl holds the sm_90 mamba_ssm wheel as 15 MB parts (mamba_whl.part.*) and .pydeps textual's wheels
# (ignored folders, see benchmarks/build_mamba_ssm.sh). Each step has its own time limit, so a slow one
# cannot take the others' time; everything lands in $OUT (at most 8 files come back).
set -uo pipefail
export PYTHONUNBUFFERED=1
mkdir -p /tmp/w
cat .whl/mamba_whl.part.* > /tmp/w/mamba_ssm-2.2.6.post3-cp312-cp312-linux_x86_64.whl
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/w/*.whl .pydeps/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
out=${OUT:-/tmp/out}
mkdir -p "$out"
# 1. Training speed after the host-wait removal and Longhorn's dynamic compiled transition (issue 15).
timeout 330 python benchmarks/train_speed.py --larger-batches 256 --out "$out/train_speed.json" 2>&1 \
  | grep -v -e profiler -e '^W1' | cut -c1-200 > "$out/train_speed.log"
# 2. Longhorn's fast path against the reference with its compiled transition (issue 15).
timeout 100 python benchmarks/train_agreement.py --models longhorn --out "$out/train_agreement_longhorn_h200.json" >/dev/null 2>&1
# 3. The studio with the models in a child process, five learners and Mamba alone (issue 17).
timeout 100 python benchmarks/tui_fps.py --device cuda --worker both --seconds 8 --repeats 1 \
  --out "$out/tui_fps_h200_worker.json" >/dev/null 2>&1
# 4. The anytime objective's cost on the GPU (never timed there).
timeout 90 python benchmarks/anytime_step.py --out "$out/anytime_step_h200.json" >/dev/null 2>&1
ls -l "$out"
