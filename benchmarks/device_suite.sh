#!/usr/bin/env bash
# The GPU device suite, one script (< 8 min on one H100/H200-class GPU; budgets below add up to 7.5 min):
#   1. Pallas block-sparse attention (Triton) vs jax.nn.dot_product_attention(implementation='cudnn')
#      on the same active blocks: TFLOP/s of each, forward and forward+backward;
#   2. the image-large composed sampler with random weights: s/asset at batch 1 and 8, peak memory;
#   3. one G_L img_L training step: s/step and MFU.
# Every measurement prints one `device_suite: ...` line. Needs jax with CUDA in $PYTHON (default: python).
#   benchmarks/device_suite.sh           # on the GPU
#   benchmarks/device_suite.sh --tiny    # the same scripts at CPU sizes (checks they run; figures meaningless)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TINY=(); SCALE=1
if [ "${1:-}" = "--tiny" ]; then TINY=(--tiny); SCALE=8; export JAX_PLATFORMS=cpu; fi  # CPU compiles: longer budgets
if [ ${#TINY[@]} -eq 0 ] && ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
  echo "device_suite: error: no GPU backend in $PY (jax.default_backend() != 'gpu'); use --tiny for a CPU check" >&2
  exit 2
fi
status=0
run() {  # run <seconds> <script> [args]: a script that fails or overruns is reported, the suite goes on
  local budget=$1; shift
  if ! timeout "$((budget * SCALE))" "$PY" "$@"; then echo "device_suite: FAILED or over $((budget * SCALE))s: $*" >&2; status=1; fi
}
"$PY" -c 'import jax; print(f"device_suite: device={jax.devices()[0].device_kind!r} jax={jax.__version__}")'
run 90 benchmarks/attention_kernels.py "${TINY[@]}"
run 240 benchmarks/sampler_large.py "${TINY[@]}"
run 120 benchmarks/train_step.py "${TINY[@]}"
exit $status
