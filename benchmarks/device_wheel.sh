# Sourced by the device scripts (device_pending.sh, device_retrain.sh) after they set $out: installs the
# sm_90 mamba_ssm wheel into /tmp/site and puts it and the repository on PYTHONPATH.
# .whl holds the wheel as 15 MB parts (mamba_whl.part.*). Without them, .whl-src must hold the sdist with
# setup.py cut to sm_90 (benchmarks/build_mamba_ssm.sh): the wheel is built (about 3 minutes), its parts
# are left in $out for the next call, and $built is 1 so that a caller can skip work to stay in time.
mkdir -p /tmp/w "$out"
built=0
if ls .whl/mamba_whl.part.* >/dev/null 2>&1; then
  cat .whl/mamba_whl.part.* > /tmp/w/mamba_ssm-2.2.6.post3-cp312-cp312-linux_x86_64.whl
else
  built=1
  (cd .whl-src/mamba_ssm-2.2.6.post3 && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=16 python3 -m pip wheel -q \
     --no-build-isolation --no-deps . -w /tmp/built) > "$out/build.log" 2>&1 || exit 1
  cp /tmp/built/mamba_ssm-*.whl /tmp/w/mamba_ssm-2.2.6.post3-cp312-cp312-linux_x86_64.whl
  (cd "$out" && split -b 15M /tmp/w/mamba_ssm-*.whl mamba_whl.part.) && rm "$out/build.log"
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/w/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
