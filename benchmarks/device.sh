#!/usr/bin/env bash
# GPU figures for codefill, on a lent H100/H200 machine. Run from the repository root; results go to $OUT.
#
#   bash benchmarks/device.sh                 # ~8 minutes at most; writes $OUT/device.json and $OUT/device.log
#                                             # (exit 5: its hard timeout, TIMEOUT_S, cut it short; never 124/137)
#   PEAK_TFLOPS=989 bash benchmarks/device.sh # another card's dense bf16 peak for the compute bound
#
# What it measures (benchmarks/gpu.py): the built-in model and an Open-dCoder-0.5B-shaped model (random weights),
# batch 1 and 8, fills of 64 tokens in a 256-token window, 32 steps: the fixed-shape denoising loop eager and as
# CUDA graphs (step time against 2 x parameters x window tokens FLOPs at PEAK_TFLOPS), the engine as it is, our
# causal KV-cache decoder (eager and CUDA graph) and transformers' generate, then torch.compile while time lasts.
#
# The machine has torch and nothing downloadable. Everything else is optional and degrades:
#   - the engine needs the tokenizers and safetensors libraries; without them the engine rows are skipped and the
#     loop runs on byte ids. To bring them: cp -r .venv/lib/python3*/site-packages/{tokenizers,safetensors}
#     benchmarks/vendor/ (abi3 wheels, any CPython >= 3.10) and carry "benchmarks/vendor".
#   - data/tokenizer.json (carry "data/tokenizer.json") is the project's tokenizer; without it one is trained on
#     the spot from a standard library module (seconds).
#   - transformers (129 MB installed) does not fit the 64 MiB carry limit: its baseline is skipped, and the JSON
#     says so, unless the machine already has it.
# Checked on the CPU with: python -m benchmarks.bench device --smoke --out /tmp/dev
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench-device}"
mkdir -p "$OUT"
# The first interpreter that has torch (override with PYTHON=...).
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python python3 .venv/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then echo "no python with torch found" | tee "$OUT/device.log"; exit 3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d benchmarks/vendor ]; then
  export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks/vendor"
fi
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/codefill-inductor}"
{
  echo "== $(date -u +%FT%TZ) codefill device benchmark"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} 2>&1 | tee "$OUT/device.log"
# --budget-s: no new measurement starts after this; a compile that starts just before it still has to finish,
# so the hard timeout leaves room for one.
timeout -k 10 "${TIMEOUT_S:-470}" "$PY" -u -m benchmarks.bench device --out "$OUT" --budget-s "${BUDGET_S:-330}" \
  --peak-tflops "${PEAK_TFLOPS:-790}" "$@" 2>&1 | grep -v -E "^\s*warnings.warn|UserWarning" | tee -a "$OUT/device.log"
rc=${PIPESTATUS[0]}
# The hard timeout's 124/137 become 5: the device tool takes 124 and 137 for its own timeout, and the figures
# finished before the cut are in device.json either way.
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "== the hard timeout (${TIMEOUT_S:-470} s) cut it short (status $rc, exiting 5); device.json holds every figure finished" | tee -a "$OUT/device.log"
  rc=5
else
  echo "== exit status $rc" | tee -a "$OUT/device.log"
fi
exit "$rc"
