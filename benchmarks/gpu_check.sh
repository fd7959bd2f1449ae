#!/usr/bin/env bash
# Every GPU check in one go, for a GPU node (or a lent GPU machine). Writes everything it prints to
# benchmarks/results/gpu_check_<card>_<date>.txt as well:
#   1. the CUDA tests (tests/test_gpu.py: captured vs eager step, a padded epoch as a CUDA graph in
#      fp32, a bit-exact resume under deterministic algorithms, a cell end to end and a killed run
#      resumed; those needing MLflow skip without it; two cells with dropout captured and replayed side
#      by side equal each alone), tests/test_train_step.py and tests/test_streams.py (random streams);
#   2. benchmarks/gpu_fit_resume.py: a thesis-size run, checkpoint and resume without MLflow;
#   3. benchmarks/gpu_side_by_side.py: cells side by side on CUDA streams (K=1 and 8), aggregate
#      events/s over one common window;
#   4. benchmarks/gpu_pack_e2e.py (needs MLflow): 2 configurations x 3 seeds (stacked; GPU_E2E_STACK=off: not) of full data
#      through the real `grid pack` command; one SUMMARY line: aggregate events/s over one common
#      window, wall per cell with compile and evaluation, the full-grid estimate;
#   5. benchmarks/gpu_stacked_probe.py: steady events/s of more streams against seeds stacked
#      into one vmapped model (the batched-seeds question);
#   6. benchmarks/gpu_throughput.py: the step modes and batch sizes.
#   bash benchmarks/gpu_check.sh            # from the project root, with the project's environment active
#   GPU_STEPS="tests probe" bash benchmarks/gpu_check.sh   # some of: tests resume side e2e probe throughput
# Sized for a short GPU slot (at most 10 minutes a command, 15 in all): the default steps (tests,
# resume, e2e with 2 cells) add up to at most 12 minutes, each at most 8, and a step past its limit
# is killed with its children (timeout -k): a threaded pack ignores SIGTERM until its threads end.
# Results go to benchmarks/results/ and, when $OUT is set (a lent GPU machine hands back only what
# is written there), to $OUT as well.
# Without MLflow installed, carried wheels are used when a .whl/ folder is there (see the device README).
# benchmarks/gpu_wheels.txt lists what a bare GPU node with Python 3.12 lacked (MLflow 3.17.2 and 45
# packages in all, ~45 MB); fetch them with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl -r benchmarks/gpu_wheels.txt
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8} PYTHONUNBUFFERED=1 MLFLOW_ENABLE_TELEMETRY=false
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '_' | tr -s _ | sed 's/_$//')
STEPS=" ${GPU_STEPS:-tests resume e2e} "
out=benchmarks/results/gpu_check_${card:-nogpu}_$(date +%F)${GPU_TAG:+_$GPU_TAG}.txt
mkdir -p benchmarks/results
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; exec > >(tee "$out" "$OUT/$(basename "$out")") 2>&1; else exec > >(tee "$out") 2>&1; fi
echo "gpu_check $(date -Is) on $(hostname); output also in $out"
nvidia-smi -L || true
$PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
have_mlflow=$($PY -c 'import mlflow; print(1)' 2>/dev/null || echo 0)
if [ "$have_mlflow" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then  # a bare GPU node: the carried wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl \
    && export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
  have_mlflow=$($PY -c 'import mlflow; print(1)' 2>/dev/null || echo 0)
fi
echo "mlflow importable: $have_mlflow"
echo "steps: $STEPS"
step() {  # step NAME TIMEOUT CMD...: only the steps named in GPU_STEPS (by their short name)
  local short=$1 name=$2 limit=$3; shift 3
  case "$STEPS" in *" $short "*) ;; *) return 0 ;; esac
  echo "=== $name"
  local t0=$(date +%s)
  timeout -k 20 "$limit" "$@"
  echo "$name: exit $? in $(( $(date +%s) - t0 )) s"
}
step tests "GPU tests" "${GPU_TEST_TIMEOUT:-240}" $PY -m pytest -q -s -p no:cacheprovider tests/test_gpu.py tests/test_train_step.py tests/test_streams.py tests/test_stacked.py
step resume "gpu_fit_resume" "${GPU_RESUME_TIMEOUT:-120}" $PY benchmarks/gpu_fit_resume.py
step side "gpu_side_by_side" "${GPU_SIDE_TIMEOUT:-420}" $PY benchmarks/gpu_side_by_side.py --k 1,8
if [ "$have_mlflow" = 1 ]; then
  step e2e "gpu_pack_e2e" "${GPU_E2E_TIMEOUT:-330}" $PY benchmarks/gpu_pack_e2e.py --configs "${GPU_E2E_CONFIGS:-2}" --seeds 3 --stack-seeds "${GPU_E2E_STACK:-on}" --epochs 2
else
  echo "=== gpu_pack_e2e skipped: MLflow is not installed here (carry its wheels, or run on a node with the project's environment)"
fi
step probe "gpu_stacked_probe" "${GPU_PROBE_TIMEOUT:-300}" $PY benchmarks/gpu_stacked_probe.py
step throughput "gpu_throughput" "${GPU_BENCH_TIMEOUT:-420}" $PY benchmarks/gpu_throughput.py
