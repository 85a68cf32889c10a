#!/usr/bin/env bash
# On a machine with a CUDA GPU: install csdfd (no network needed), build the CUDA extension, run
# the test suite natively (Triton compiled for real, the extension's CUDA kernels), then the
# benchmarks. Results land in bench/results/<GPU>-<date>.{json,md,log}.
#   bash bench/run_gpu.sh                 # everything
#   TESTS="tests/test_uvs_cgr.py" BENCH="bench/bench_uvs_cgr.py" bash bench/run_gpu.sh
#   # issue 4's targets in a few minutes (Triton only, no extension build):
#   CSDFD_SKIP_EXT=1 TESTS="tests/test_uvs_cgr.py tests/test_flatgrads.py" \
#     BENCH="bench/bench_uvs_cgr.py bench/bench_step.py" BENCH_K="not foreach" bash bench/run_gpu.sh
# Env: TESTS / BENCH (paths), BENCH_K (a pytest -k expression for the benchmarks),
#      TEST_TIMEOUT / BENCH_TIMEOUT / BUILD_TIMEOUT (seconds),
#      CSDFD_SKIP_EXT=1 (no extension), TORCH_CUDA_ARCH_LIST (default 9.0).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
tag="${CSDFD_BENCH_TAG:-${gpu}-$(date +%F)}"
mkdir -p bench/results
log="bench/results/${tag}.log"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  CSDFD_SKIP_EXT=1 python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
  if [ "${CSDFD_SKIP_EXT:-0}" != "1" ]; then
    t0=$(date +%s)
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=16 \
      timeout "${BUILD_TIMEOUT:-300}" python3 setup.py -q build_ext --inplace 2>&1 | tail -4
    echo "extension build: $(( $(date +%s) - t0 )) s"
  fi
  python3 -c "from csdfd import ops; print('cuda backends:', ops.backends('cuda')); print(ops.availability('cuda'))"
  timeout "${TEST_TIMEOUT:-600}" python3 -m pytest -q --maxfail=20 ${TESTS:-tests/} \
    -p no:cacheprovider 2>&1 | tail -30
  CSDFD_BENCH_TAG="$tag" timeout "${BENCH_TIMEOUT:-900}" python3 -m pytest -q ${BENCH:-bench/} \
    ${BENCH_K:+-k "$BENCH_K"} -p no:cacheprovider -s 2>&1 \
    | grep -E '^\||^csdfd|^saved|^target|^stream-grads|^compile|passed|failed|skipped|Error|step '
} 2>&1 | tee "$log"
echo "results: bench/results/${tag}.{json,md,log}"
