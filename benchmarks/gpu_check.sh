#!/usr/bin/env bash
# The GPU checks in one go, for a GPU node: the CUDA tests (compiled vs eager step, a cell end to
# end through `train`, kill and resume on CUDA), then benchmarks/gpu_throughput.py.
#   bash benchmarks/gpu_check.sh            # from the project root, with the project's environment active
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi -L || true
$PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
echo "=== GPU tests"
t0=$(date +%s)
timeout ${GPU_TEST_TIMEOUT:-240} $PY -m pytest -q -s -p no:cacheprovider tests/test_gpu.py tests/test_train_step.py
echo "GPU tests: exit $? in $(( $(date +%s) - t0 )) s"
echo "=== benchmarks/gpu_throughput.py"
timeout ${GPU_BENCH_TIMEOUT:-420} $PY benchmarks/gpu_throughput.py "$@"
echo "benchmark: exit $?"
