#!/usr/bin/env bash
# Peak memory of a short training run: 4 steps of lora at batch 8 on 4 SuperNI tasks (default: the
# first 4 of ../shared/data/superni; quoref's passages fill the prompts; TASKS=[a,b,...] for others),
# prompts as in configs/superni_multitask.yaml (up to 974 tokens), 1 test example per task;
# everything else is that config. Prints the peak resident memory (ru_maxrss, metrics.json
# `peak_memory_mb`; on a GPU the peak CUDA allocation) and the padding of the 4 steps.
#
#   bash benchmarks/peak_memory.sh [DATA_DIR] [OUT_DIR] [override ...]
#
# To measure another checkout's code (e.g. before a change), run it with PYTHONPATH=/that/checkout;
# the config fields passed here exist in every version since the run section had peak_memory_mb.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/superni}
out=${2:-runs/peak-memory}
shift $(($# > 2 ? 2 : $#))
python=${PYTHON:-.venv/bin/python}
tasks=${TASKS:-"[task002_quoref_answer_generation,task073_commonsenseqa_answer_generation,task1510_evalution_relation_extraction,task1590_diplomacy_text_generation]"}
"$python" -m badit.cli.main train configs/superni_multitask.yaml method.name=lora output_dir="$out" \
  data.path="$data" data.tasks="$tasks" training.max_steps=4 training.per_device_train_batch_size=8 \
  training.save_steps=1000 training.logging_steps=1 evaluation.max_examples_per_task=1 \
  evaluation.batch_size=4 "$@" --overwrite > "$out.log" 2>&1 || { tail -5 "$out.log"; exit 1; }
"$python" - "$out" <<'EOF'
import json, sys

run = json.load(open(f"{sys.argv[1]}/metrics.json"))["run"]
keys = ("peak_memory_mb", "tokens_seen", "padded_tokens", "train_seconds", "global_step")
print(json.dumps({key: run.get(key) for key in keys}))
EOF
