#!/usr/bin/env bash
# The GPU checks in one run, from the repository root, without installing dropkit:
#   (a) the CUDA tests (pytest -m cuda), (b) the ops benchmark on the GPU.
# Outputs go under "$OUT" when that variable is set, else under benchmarks/results/.
# Usage: bash benchmarks/cuda_check.sh        (about 2 minutes on one H100/H200)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} | tee "$out/cuda_machine.txt"

# (a) The CUDA tests live in these files; the rest of the suite needs the dev extras.
timeout 240 python3 -m pytest -m cuda -q -p no:cacheprovider \
    tests/test_cuda.py tests/test_mask_source.py tests/test_torch_parity.py 2>&1 | tee "$out/cuda_tests.txt"
tests_status=${PIPESTATUS[0]}

# (b) The ops benchmark: 1e6, 1e7 and 1e8 float32 elements, compiled rows and memory included.
timeout 300 python3 benchmarks/ops.py --device cuda --sizes 1e6 1e7 1e8 --no-peers \
    --out "$out/ops_cuda.json" 2>&1 | tee "$out/ops_cuda.txt"
bench_status=${PIPESTATUS[0]}

echo "cuda tests exit code: $tests_status; benchmark exit code: $bench_status" | tee -a "$out/cuda_tests.txt"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
