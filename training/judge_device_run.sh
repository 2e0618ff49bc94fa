#!/usr/bin/env bash
# Judge what a device session brought back (training/device_session.sh) against the committed built-in model, on
# this CPU, before deciding to install it: the run report, then the same held-out figures for both models.
#
#   bash training/judge_device_run.sh FILES_AT            # FILES_AT: the folder the device tool's reply names
#
#   1. FILES_AT/meta.tar unpacked; run.json printed (did the validation loss fall? first_loss near the last run's?)
#   2. the new model assembled in $WORK/new (the shards, config, index, tokenizer, training.json; the committed
#      engine.json and MODEL_CARD.md kept) and loaded once
#   3. training.heldout on Python projects no corpus holds (this interpreter's site-packages) and, when the carried
#      data has JavaScript, on the npm packages of training/heldout-npm.txt (fetched into data/js-heldout once)
#   4. exact match of held-out lines with the CPU defaults: Python (data/corpus/valid.jsonl) and JavaScript
#      (data/js/corpus/valid.jsonl), where those files are
# Nothing is installed: the last lines say how. Takes ~10-18 minutes on 2 cores (18 with other work running; the
# first run also fetches the npm held-out packages). WORK (default: a temporary folder) keeps the reports
# (heldout-python.json, heldout-javascript.json, lines-*.txt).
set -eu
cd "$(dirname "$0")/.."
FILES="${1:?usage: bash training/judge_device_run.sh FILES_AT}"
PY="${PYTHON:-python}"
MODEL=engine/models/codefill-base
WORK="${WORK:-$(mktemp -d /tmp/codefill-judge.XXXXXX)}"
mkdir -p "$WORK/meta" "$WORK/new"
tar -xf "$FILES/meta.tar" -C "$WORK/meta"
echo "== run.json"
cat "$WORK/meta/run.json"; echo
cp "$FILES"/*.safetensors "$WORK/new/"
for f in config.json model.safetensors.index.json tokenizer.json training.json; do
  cp "$WORK/meta/model/$f" "$WORK/new/"
done
for f in engine.json MODEL_CARD.md; do
  if [ -f "$MODEL/$f" ]; then cp "$MODEL/$f" "$WORK/new/"; fi
done
"$PY" -c "from engine.checkpoint import load_model; load_model('$WORK/new')"
old="$WORK/committed"
rm -rf "$old" && cp -r "$MODEL" "$old"

sources=(--sources gpu_data/sources.json)
if [ -f "$WORK/meta/data/sources.json" ]; then sources+=(--sources "$WORK/meta/data/sources.json"); fi
echo "== held-out Python (projects no corpus holds)"
"$PY" -m training.heldout --models "$old" "$WORK/new" "${sources[@]}" --max-files 270 --per-project 15 \
  --json "$WORK/heldout-python.json"
if grep -q '"language": "javascript"' gpu_data/sources.json 2>/dev/null; then
  if [ ! -f data/js-heldout/tarballs.txt ]; then
    "$PY" -m training.npm fetch --list training/heldout-npm.txt --out data/js-heldout
  fi
  echo "== held-out JavaScript (npm packages no corpus holds)"
  "$PY" -m training.heldout --models "$old" "$WORK/new" "${sources[@]}" --npm data/js-heldout --max-files 270 \
    --per-project 15 --json "$WORK/heldout-javascript.json"
fi
grid='{"tokens_per_step":[3],"refresh_every":[8]}'
for pair in "python:data/corpus/valid.jsonl:1000" "javascript:data/js/corpus/valid.jsonl:500"; do
  IFS=: read -r lang valid n <<< "$pair"
  if [ ! -f "$valid" ]; then echo "== no $valid: held-out $lang lines skipped"; continue; fi
  for m in "$old" "$WORK/new"; do
    echo "== held-out $lang lines, $(basename "$m")"
    "$PY" -m training.tune_decoding --model "$m" --valid "$valid" --n "$n" --grid "$grid" 2>&1 | tail -n 1 \
      | tee -a "$WORK/lines-$lang.txt"
  done
done
cat <<EOF
== to install the new model (when it is better):
  rm $MODEL/model*.safetensors* && cp $WORK/new/*.safetensors $WORK/new/{config,model.safetensors.index,tokenizer,training}.json $MODEL/
  then codefill eval on the CPU, python -m training.model_card (see training/device_train.sh), and commit.
EOF
