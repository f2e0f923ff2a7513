#!/usr/bin/env bash
# A CPU-sized SuperNI comparison: lora vs badit, multitask, on 4 of the benchmark's tasks.
#
#   bash benchmarks/superni_subset.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR defaults to ../shared/data/superni (folder-per-task layout). 100 training examples per
# task, prompts cut to 256 tokens, 60 optimizer steps of 8 sequences (lr 5e-4 instead of the paper's
# 2e-4 for 10 epochs, so that it finishes in minutes), BADIT regrouping every 20 steps during the first
# half; 25 test examples per task. Everything else is configs/superni_multitask.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/superni}
out=${2:-runs/superni-subset}
badit=${BADIT:-.venv/bin/badit}
tasks="[task363_sst2_polarity_classification,task875_emotion_classification,task591_sciq_answer_generation,task073_commonsenseqa_answer_generation]"
common=(data.path="$data" data.tasks="$tasks" data.max_train_examples_per_task=100 data.max_source_length=256
        training.max_steps=60 training.learning_rate=5e-4 training.save_steps=1000 training.logging_steps=10
        method.regroup_every=20 evaluation.max_examples_per_task=25 evaluation.batch_size=25)
for method in lora badit; do
  "$badit" train configs/superni_multitask.yaml method.name=$method output_dir="$out/$method" "${common[@]}" --overwrite
done
"$badit" compare "$out/lora" "$out/badit" --output "$out/comparison.md"
