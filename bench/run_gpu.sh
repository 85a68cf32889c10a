#!/usr/bin/env bash
# On a machine with a CUDA GPU: build the extension, run the test suite natively (Triton
# compiled for real, CUDA extension), then the benchmarks; results land in bench/results/ named
# after the GPU and the date. Usage: bash bench/run_gpu.sh [extra pytest args for bench/]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
tag="${gpu}-$(date +%F)"
mkdir -p bench/results
log="bench/results/${tag}.log"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  if [ "${CSDFD_SKIP_EXT:-0}" != "1" ]; then
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" python3 setup.py build_ext --inplace 2>&1 | tail -5
  fi
  python3 -c "from csdfd import ops; print('backends:', ops.backends('cuda'), ops.availability('cuda'))"
  python3 -m pytest -q -x tests/ -p no:cacheprovider 2>&1 | tail -25
  CSDFD_BENCH_TAG="$tag" python3 -m pytest -q bench/ -p no:cacheprovider "$@" 2>&1 \
    | grep -v -E '^(test_|Name|---|Legend|  Outliers|  OPS|$)'
} 2>&1 | tee "$log"
echo "results: bench/results/${tag}.{json,md,log}"
