#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with torch, csdfd (editable, with the C++/CUDA
# extension built against that torch), the dlib face tools and the test/bench tools.
# Usage: bash scripts/setup.sh            then use .venv/bin/python
# Env: CSDFD_SKIP_EXT=1 (no extension), CSDFD_CPU_ONLY=1 (CPU-only extension), EXTRAS (default
# "test,data,bench").
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
# torch 2.14.1 + torchvision 0.29.1 (timm needs torchvision); on our machines they come from the
# local wheel store. Elsewhere any torch >= 2.6 with a matching torchvision works.
"$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
# Build tools first: --no-build-isolation builds csdfd._C against the torch above (an isolated
# build would fetch a second torch); ninja compiles csrc/, the CUDA sources too when nvcc exists.
"$py" -m pip install -q ninja 'setuptools>=64' wheel
"$py" -m pip install -q -e ".[${EXTRAS:-test,data,bench}]" --no-build-isolation
"$py" -c "import csdfd; from csdfd import ops; print('csdfd', csdfd.__version__, 'backends:', ops.backends())"
