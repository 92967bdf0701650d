#!/usr/bin/env bash
# Build mamba_ssm's CUDA selective scan for Hopper (sm_90) from an unpacked sdist and install it into
# /tmp/site (for a GPU machine with torch and nvcc but no package registry).
#   bash benchmarks/build_mamba_ssm.sh .whl-src/mamba_ssm-2.2.6.post3 [WHEEL_DIR]
# The sdist's setup.py has its -gencode list cut to sm_90 beforehand (about 2.5 minutes to build).
# A wheel already in WHEEL_DIR is installed without building: the sm_90 wheel is 40 MB, so it can come
# back from one device call in 15 MB parts (split -b 15M) and travel to the next (cat the parts back).
set -euo pipefail
src=$1
wheels=${2:-/tmp/wheels}
mkdir -p "$wheels" /tmp/site
if ! ls "$wheels"/mamba_ssm-*.whl >/dev/null 2>&1; then
  (cd "$src" && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} python3 -m pip wheel -q --no-build-isolation --no-deps . -w "$wheels")
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/mamba_ssm-*.whl
echo "installed $(ls "$wheels"/mamba_ssm-*.whl) into /tmp/site"
