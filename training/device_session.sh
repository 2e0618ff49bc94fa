#!/usr/bin/env bash
# One lent-GPU session in one device call: train the built-in model first (training/device_train.sh), evaluate it
# on HumanEval-Infilling on the GPU only when EVAL=1 (this project's CPU evaluates it afterwards at no device time),
# then measure GPU figures with the time left (benchmarks/device.sh), and pack what comes back into at most 4 files.
#
#   bash training/prepare_device_data.sh     # first, here: gpu_data/ (skips what is there)
#   run(command="bash training/device_session.sh", carry=["gpu_data"], timeout_s=595)
#
# Why one call: a machine's start costs one to two minutes of the session's 15, and no machine starts with under 4
# minutes left, so a second call rarely fits. Training comes first (every lent device adds to the same model); the
# benchmark gets what remains of TOTAL_S. Tunables (environment): TOTAL_S (580: keep under the call's timeout_s),
# TRAIN_MINUTES (7.6; the device's data extension is taken out of it), HARD_S (TOTAL_S - 40, device_train.sh's hard
# limit, the extension included: at it training stops after its step and saves), EVAL (0), and whatever
# device_train.sh and device.sh take (BATCH, LR, WORKERS, NO_COMPILE, ...). The sixth
# session's call (these defaults) spent 35 s extending the data, trained 7.0 minutes, left 80 s of benchmark and took
# 564 s (the machine's start is not in it; with the second call below, 780 of the 900 s were used).
#
# What comes back ($OUT): model-0000N-of-0000M.safetensors (the trained weights, bf16, each under 16 MiB) and
# meta.tar (model/: config.json, model.safetensors.index.json, tokenizer.json, training.json; run.json, train.log;
# data/: sources.json (every training source with its license) and extend.json, when the run added the device's
# installed packages to the data; eval/: summary-SET.json and tasks-SET.jsonl.gz per task set, the new model on
# HumanEval-Infilling on the GPU (EVAL_TASKS); bench/: device.json, device.log, device.png). Here, afterwards:
#   rm -rf /tmp/session && mkdir -p /tmp/session && tar -xf FILES_AT/meta.tar -C /tmp/session
#   cat /tmp/session/run.json /tmp/session/eval/summary-*.json      # did the loss and pass@1 improve?
#   rm engine/models/codefill-base/model*.safetensors* && cp FILES_AT/*.safetensors \
#     /tmp/session/model/{config,model.safetensors.index,tokenizer,training}.json engine/models/codefill-base/
# (see the AFTER notes in training/device_train.sh for the evaluation that decides the default model;
# `bash training/judge_device_run.sh FILES_AT` runs that comparison in one go, ~10-18 minutes, before installing).
#
# A machine stays warm for ~30 s after a call, /tmp included: if device time is left, a second call made at once
# can continue the model just trained without a new start or transfer, e.g.
#   run(command="INIT=/tmp/codefill-session-work.XXXXXX/model DATA=/tmp/codefill-data EXTEND=0 EVAL=0 \
#       TRAIN_MINUTES=3.2 HARD_S=262 TOTAL_S=285 bash training/device_session.sh", timeout_s=300)
# (the directory is named in the first call's output; /tmp/codefill-data holds the data extend made there).
# Or spend the rest on the GPU benchmark alone (as the fifth and sixth sessions' second calls did; --profile prints
# where a step's time goes; --no-eager --no-hf --no-compile skip rows measured already: torch.compile made the step
# twice as slow in the sixth session, so the CUDA-graph rows at both batch sizes get the time):
#   run(command="OUT=$OUT TIMEOUT_S=200 BUDGET_S=145 bash benchmarks/device.sh --profile --no-eager --no-hf \
#       --no-compile >/dev/null 2>&1; cat $OUT/device.log", timeout_s=215)
set -u
cd "$(dirname "$0")/.."
start=$SECONDS
TOTAL_S="${TOTAL_S:-580}"
if [ -z "${OUT:-}" ]; then OUT="$(mktemp -d /tmp/codefill-session.XXXXXX)"; fi
mkdir -p "$OUT"
work="$(mktemp -d /tmp/codefill-session-work.XXXXXX)"

pack() {  # everything small into one tar, the weight shards beside it
  local files=()
  cd "$work"
  for f in model/config.json model/model.safetensors.index.json model/tokenizer.json model/training.json \
           run.json train.log data/sources.json data/extend.json eval/*.json eval/*.jsonl.gz \
           bench/device.json bench/device.log bench/device.png; do
    if [ -f "$f" ]; then files+=("$f"); fi
  done
  if [ "${#files[@]}" -gt 0 ]; then tar -cf "$OUT/meta.tar.tmp" "${files[@]}" && mv "$OUT/meta.tar.tmp" "$OUT/meta.tar"; fi
  for shard in model/*.safetensors; do
    if [ -f "$shard" ]; then cp "$shard" "$OUT/"; fi
  done
  cd - >/dev/null
}

echo "== training for ${TRAIN_MINUTES:-7.6} minutes"
train_limit=$(( TOTAL_S - 40 ))
OUT="$work" PACKED=1 MINUTES="${TRAIN_MINUTES:-7.6}" HARD_S="${HARD_S:-$train_limit}" \
  bash training/device_train.sh 2>&1 | tee "$work/train.log"
train_rc=${PIPESTATUS[0]}
pack
echo "== training exit status $train_rc after $(( SECONDS - start )) s"

# The new model on HumanEval-Infilling, one task set after another (EVAL_TASKS, default single-line then
# multi-line), each in its own call so that a set cut short by the clock costs only itself; the benchmark travels in
# gpu_data/benchmarks/ (0.4 MiB: cp -r ../shared/benchmarks/human-eval-infilling gpu_data/benchmarks/). EVAL=1 runs it.
# Batches of EVAL_BATCH (64) fills: a small model's step on a GPU costs about the same at batch 16 or 64 (the last
# session's single-line run at 16 took ~0.6 s a batch), so bigger batches are what lets multi-line fit.
if [ "${EVAL:-0}" = 1 ] && [ -d gpu_data/benchmarks/human-eval-infilling ] && [ -f "$work/model/config.json" ]; then
  mkdir -p "$work/eval"
  for set in $(echo "${EVAL_TASKS:-single-line,multi-line}" | tr ',' ' '); do
    eval_s=$(( TOTAL_S - (SECONDS - start) - 75 ))  # the benchmark keeps at least a minute
    if [ "$eval_s" -lt 45 ]; then echo "== no time left to evaluate $set"; break; fi
    echo "== evaluating the new model on $set (at most $eval_s s)"
    timeout -k 10 "$eval_s" "${PYTHON:-python3}" -m engine.cli eval --model "$work/model" --device "${EVAL_DEVICE:-cuda}" ${EVAL_ARGS:-} \
      --benchmarks gpu_data/benchmarks --tasks "$set" --batch-size "${EVAL_BATCH:-64}" --workers 12 --quiet \
      --summary-json "$work/eval/summary-$set.json" --out "$work/eval/tasks-$set.jsonl" 2>&1 | tail -n 4
    gzip -f "$work/eval/tasks-$set.jsonl" 2>/dev/null
    pack
  done
fi

left=$(( TOTAL_S - (SECONDS - start) - 15 ))
if [ "$left" -ge 60 ]; then
  echo "== benchmark with $left s left"
  OUT="$work/bench" TIMEOUT_S="$left" BUDGET_S="$(( left * 2 / 3 ))" bash benchmarks/device.sh ${BENCH_ARGS:-} >/dev/null 2>&1
  echo "== benchmark exit status $? after $(( SECONDS - start )) s"
  pack
  if [ -f "$work/bench/device.log" ]; then tail -n 40 "$work/bench/device.log"; fi
else
  echo "== no time left for the benchmark ($left s)"
fi
ls -la "$OUT"
# device_train.sh's status: 0 trained to the end, 5 stopped early with a model that came back (never 124/137,
# which the device tool would report as this call's own timeout), 1 no model.
echo "== training exit status $train_rc (0: to the end; 5: stopped early, model came back; run.json says more)"
exit "$train_rc"
