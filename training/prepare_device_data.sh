#!/usr/bin/env bash
# Build gpu_data/, what a lent GPU machine needs beside the repository, on this (CPU) machine, from nothing:
#   1. the corpus's wheels (training/corpus-wheels.txt) into data/wheels       ~1-2 min, PyPI
#   2. corpus, token arrays under data/, tokenized with the built-in model's tokenizer (so the device run can
#      continue that model)                                                     ~3 min
#   3. JavaScript from the npm packages of training/corpus-npm.txt, tokenized the same way, under data/js
#      (python -m training.npm prepare; 13M tokens)                            ~40 s, npm registry
#   4. the packed copy of the token arrays in gpu_data/, JavaScript joining the training split; a random subset of
#      whole documents of MAX_TRAIN_TOKENS (40.5M of 42.8M) so that the tree and gpu_data fit the 64 MiB
#      a device call carries                                                    ~70 s
#   5. tree-sitter wheels for the device's Python 3.12 (syntax spans of the added data) in gpu_data/wheels
#   6. only with WITH_BENCHMARKS=1 (for EVAL=1 sessions; 0.4 MiB that no longer fits beside the JavaScript):
#      HumanEval-Infilling (evaluated on the GPU, never trained on) in gpu_data/benchmarks
# Each step is skipped when its output is there. Then: python -m training.device_data size --carry gpu_data, and
# the call in training/device_session.sh's header. Usage: bash training/prepare_device_data.sh [DATA] [OUT]
set -eu
cd "$(dirname "$0")/.."
DATA="${1:-data}"
OUT="${2:-gpu_data}"
PY="${PYTHON:-python}"
MODEL_TOK="engine/models/codefill-base/tokenizer.json"
BENCH="${BENCHMARKS:-../shared/benchmarks}"
if [ ! -d "$DATA/wheels" ] || [ -z "$(ls "$DATA"/wheels/*.whl 2>/dev/null)" ]; then
  "$PY" -m training.pipeline fetch --out "$DATA/wheels"
fi
"$PY" -m training.pipeline prepare --data "$DATA" --wheels "$DATA/wheels" --tokenizer "$MODEL_TOK"
if ! cmp -s "$DATA/tokenizer.json" "$MODEL_TOK"; then
  echo "$DATA/tokenizer.json is not $MODEL_TOK: the device could not continue the built-in model from this data;" \
       "move $DATA away and run this again" >&2
  exit 1
fi
if [ ! -f "$DATA/js/train.npz" ]; then
  "$PY" -m training.npm prepare --out "$DATA/js" --tokenizer "$MODEL_TOK"
fi
if [ ! -f "$OUT/train.pack.npz" ]; then
  "$PY" -m training.device_data pack --data "$DATA" --extra "$DATA/js" --out "$OUT" \
    --max-train-tokens "${MAX_TRAIN_TOKENS:-40500000}"
fi
if [ -z "$(ls "$OUT"/wheels/tree_sitter-*.whl 2>/dev/null)" ]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT/wheels" tree-sitter==0.26.1 tree-sitter-python==0.25.0
fi
if [ "${WITH_BENCHMARKS:-0}" = 1 ] && [ ! -d "$OUT/benchmarks/human-eval-infilling" ]; then
  if [ -d "$BENCH/human-eval-infilling" ]; then
    mkdir -p "$OUT/benchmarks" && cp -r "$BENCH/human-eval-infilling" "$OUT/benchmarks/"
  else
    echo "no $BENCH/human-eval-infilling: the device session will train and benchmark without evaluating" >&2
  fi
fi
if ! "$PY" -m training.device_data size --carry "$OUT"; then
  echo "over the 64 MiB a device call carries: rm $OUT/train.pack.npz and run this again with a smaller" \
       "MAX_TRAIN_TOKENS (now ${MAX_TRAIN_TOKENS:-40500000})" >&2
  exit 1
fi
