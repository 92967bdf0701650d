#!/usr/bin/env bash
# The GPU measurements still owed, in one device call (about 8 minutes of an H200):
#   run(command="bash benchmarks/device_pending.sh", carry=[".whl"])
# .whl holds the sm_90 mamba_ssm wheel as 15 MB parts (mamba_whl.part.*; debug symbols stripped, 37.7 MB).
# Without them, carry .whl-src instead: the sdist with setup.py cut to sm_90, which this script builds
# (about 3 minutes; step 2 is then skipped for time) and sends back in parts (benchmarks/build_mamba_ssm.sh).
# A call carries at most 64 MiB with the working tree (30.4 MB): with the wheel, move a tracked file the
# call does not need out of the tree for it (recordings/run.h5, 2.7 MB, or checkpoints/previous/, 11.3 MB)
# and `git checkout` it after. The stripped wheel was made here from the one built on the device
# (strip --strip-debug, RECORD updated) and has not been installed there yet. On
# 2026-12-01 the training-speed run shared its host with the other benchmarks and its host-bound figures
# came out low (README, Meta-training speed): this version runs it alone, then Longhorn's agreement run
# (which left no file last time: its log now comes back). Everything lands in $OUT (at most 8 files).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
source benchmarks/device_wheel.sh  # the mamba_ssm wheel, built here when no parts are carried ($built)
# 1. Training speed after the host-wait removal and Longhorn's dynamic compiled transition (issue 15),
#    alone on the machine: a host-bound step is slowed by anything else using the host's cores.
timeout 330 python3 benchmarks/train_speed.py --larger-batches 256 --out "$out/train_speed.json" 2>&1 \
  | grep -v -e profiler -e '^W1' | cut -c1-200 > "$out/train_speed.log"
# 2. Longhorn's fast path against the reference with its compiled transition (issue 15).
[ "$built" = 1 ] || timeout 200 python3 benchmarks/train_agreement.py --models longhorn --out "$out/train_agreement_longhorn_h200.json" \
  > "$out/train_agreement_longhorn.log" 2>&1
ls -l "$out"
