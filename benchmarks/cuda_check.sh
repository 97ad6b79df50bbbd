#!/usr/bin/env bash
# The GPU checks in one run, from the repository root, without installing dropkit:
#   (a) the CUDA tests (pytest -m cuda), (b) the ops benchmark on the GPU, (c) the lab's CUDA
#   tests (its trainers and the batchable twins), (d) the lab against a plain loop on the same
#   GPU, 100-run grids of the small models (benchmarks/lab_architectures.py --device cuda).
# Outputs go under "$OUT" when that variable is set, else under benchmarks/results/.
# Usage: bash benchmarks/cuda_check.sh        (about 8 minutes on one H100/H200)
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

# (c) The lab's CUDA tests.
timeout 300 python3 -m pytest -m cuda -q -p no:cacheprovider tests/test_lab_*.py 2>&1 \
    | tee "$out/cuda_lab_tests.txt"
lab_status=${PIPESTATUS[0]}

# (d) The lab against a plain loop on the GPU: 4 or 5 rates x 25 seeds per row.
timeout 420 python3 benchmarks/lab_architectures.py --device cuda --seeds 25 \
    --only mlp,cnn,transformer,lstm --plain-budget 20 2>&1 | tee "$out/lab_architectures_cuda.txt"
lab_bench_status=${PIPESTATUS[0]}
cp benchmarks/results/lab_architectures.json "$out/" 2>/dev/null || true

echo "cuda tests exit code: $tests_status; benchmark exit code: $bench_status;" \
    "lab cuda tests: $lab_status; lab benchmark: $lab_bench_status" | tee -a "$out/cuda_tests.txt"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ] && [ "$lab_status" -eq 0 ] \
    && [ "$lab_bench_status" -eq 0 ]
