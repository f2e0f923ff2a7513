"""The code blocks of README.md and docs/usage.md, run as a user pastes them (tiny model and sizes
substituted), so that the docs stay true.

- every `badit ...` command of a bash block parses with the CLI's own parser, and a `badit train` of a
  shipped config loads that config with the command's overrides (field names, types, checks);
- the python blocks run against a tiny random model (`substitute` names each replaced string, so a
  changed block fails here instead of silently testing something else);
- README's "Train on your own tasks" block runs in bash: the data script, `badit data check`, `badit train`;
- usage's JSON rows are read as own data, its abridged sweep file agrees with the shipped one.
The TRL and plain-loop blocks of docs/usage.md run in tests/test_custom_loops.py.
Not run: installing (`scripts/install.sh`), `lm_eval` (lm-evaluation-harness, not installed here), `badit demo` on SmolLM2 (minutes; its pipeline is
tests/test_training_runs.py's), several-GPU launches (`torchrun`, `accelerate`: their commands parse
here) and `vllm serve` (docs/usage.md says it was not run here).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, char_tokenizer, doc_block, make_tiny_model, save_tiny_model, substitute

DOCS = ("README.md", "docs/usage.md")
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}:{% endif %}"
)


def fenced_blocks(doc: str, language: str) -> list[str]:
    text = (REPO / doc).read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def badit_commands(block: str) -> list[list[str]]:
    """The argument lists of the `badit` commands of a bash block (continuation lines joined, comments
    and heredocs dropped; `badit`, `.venv/bin/badit` and `python -m badit.cli.main`)."""
    block = re.sub(r"<<'EOF'\n.*?\nEOF\n", "\n", block, flags=re.S).replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part, comments=True)
            for i, word in enumerate(words):
                if word.endswith("badit") and "/" not in word.replace(".venv/bin/", ""):
                    commands.append(words[i + 1 :])
                    break
                if word == "badit.cli.main":
                    commands.append(words[i + 1 :])
                    break
    return commands


ALL_COMMANDS = [
    (doc, args) for doc in DOCS for block in fenced_blocks(doc, "bash") for args in badit_commands(block)
]


def test_the_docs_have_badit_commands():
    # README: install+demo, own tasks (data check, train), the command list (11 lines); usage: the rest
    assert len([1 for doc, _ in ALL_COMMANDS if doc == "README.md"]) >= 14
    assert {args[0] for _, args in ALL_COMMANDS if args} >= {
        "train",
        "eval",
        "compare",
        "analyze",
        "report",
        "sweep",
        "data",
        "demo",
        "export",
    }


@pytest.mark.parametrize("doc,args", ALL_COMMANDS, ids=[f"{d}:{' '.join(a)[:60]}" for d, a in ALL_COMMANDS])
def test_every_badit_command_of_the_docs_parses(doc, args):
    from badit.cli.main import build_parser
    from badit.experiments.config import load_config

    if args in (["--version"], ["train", "--help"]):
        return  # answered by argparse itself (tests/test_cli_startup.py)
    parsed, extra = build_parser().parse_known_args(args)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(parsed, "overrides")]
    assert not stray, f"{doc}: `badit {' '.join(args)}`: unrecognized {stray}"
    config = getattr(parsed, "config", None)
    if parsed.command == "train" and config and config.endswith(".yaml"):
        assert (REPO / config).is_file(), f"{doc}: {config} is not in the repository"
        overrides = [*parsed.overrides, *extra]
        if any(o.startswith("training.deepspeed=") for o in overrides):
            pytest.importorskip("deepspeed")  # the config checks that the package is installed
        load_config(REPO / config, overrides)  # raises ConfigError on a field the docs misname
    if parsed.command == "sweep":
        assert (REPO / parsed.sweep_file).is_file(), f"{doc}: {parsed.sweep_file} is not in the repository"


def test_the_json_rows_of_usage_are_valid_own_data(tmp_path):
    from badit.data import open_source

    (block,) = [b for b in fenced_blocks("docs/usage.md", "json") if '"capitals"' in b]
    (tmp_path / "rows.jsonl").write_text(block, encoding="utf-8")
    with pytest.raises(Exception, match="one format per file"):  # the docs mix the two formats on purpose
        open_source(tmp_path / "rows.jsonl").task_names()
    lines = block.splitlines()
    (tmp_path / "pc.jsonl").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    source = open_source(tmp_path / "pc.jsonl")  # 2 rows: 1 test (10%, at least one), 1 train
    outputs = [x.outputs for split in ("train", "test") for t in source.load(split) for x in t.instances]
    assert sorted(outputs) == [["Paris"], ["Rome", "Roma"]]
    assert json.loads(lines[2])["messages"][-1]["role"] == "assistant"


@pytest.mark.slow
def test_readme_use_it_in_your_own_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "tiny")
    code = substitute(
        doc_block("README.md", "## Use it in your own code"),
        {'"HuggingFaceTB/SmolLM2-135M-Instruct"': repr(str(tmp_path / "tiny"))},
    )
    namespace: dict = {}
    exec(compile(code, "README.md (Use it in your own code)", "exec"), namespace)
    # 2 gate_proj layers, each regrouped (K=6 experts of r=4: 24 <= the tiny model's width 64)
    assert len(namespace["stats"]) == 2
    routing = namespace["badit"].get_routing_weights(namespace["model"])
    assert routing == {}  # the reloaded model has not run a forward yet
    batch = char_tokenizer()(["Capital of France? Paris"], return_tensors="pt")
    with torch.no_grad():
        namespace["model"](**batch)
    assert {tuple(w.shape) for w in namespace["badit"].get_routing_weights(namespace["model"]).values()} == {
        (1, 6)
    }


@pytest.mark.slow
def test_usage_export_in_python(tmp_path, monkeypatch):
    from peft import get_peft_model

    import badit

    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "tiny")
    config = badit.BaditConfig(r=2, num_experts=6, lora_dropout=0.0, regroup=False, task_type="CAUSAL_LM")
    get_peft_model(make_tiny_model("llama"), config).save_pretrained(tmp_path / "runs" / "badit" / "adapter")
    code = substitute(
        doc_block("docs/usage.md", "## Exporting: plain LoRA or a merged model"),
        {'"smollm2-135m-instruct"': repr(str(tmp_path / "tiny"))},
    )
    exec(compile(code, "docs/usage.md (export in Python)", "exec"), {})
    assert json.loads((tmp_path / "exported-lora" / "adapter_config.json").read_text())["r"] == 2 * 6 * 2
    assert json.loads((tmp_path / "merged-model" / "config.json").read_text())["dtype"] == "bfloat16"
    assert (tmp_path / "merged-model" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_readme_train_on_your_own_tasks(tmp_path):
    """The bash block as pasted, with `.venv/bin/...` as this interpreter, the tiny model for the
    embedded one and 30 -> 2 steps, 5 -> 1 test example per task."""
    tiny = save_tiny_model(tmp_path / "tiny")
    tokenizer = char_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE  # own_tasks.yaml puts prompts into the chat template
    tokenizer.save_pretrained(tiny)
    badit_cli = f"{shlex.quote(sys.executable)} -m badit.cli.main"
    script = substitute(
        doc_block("README.md", "## Train on your own tasks", "bash"),
        {
            ".venv/bin/python": shlex.quote(sys.executable),
            ".venv/bin/badit data check": f"{badit_cli} data check",
            ".venv/bin/badit train configs/own_tasks.yaml": f"{badit_cli} train {REPO / 'configs/own_tasks.yaml'} "
            f"model.name_or_path={tiny} training.report_to=[] data.max_source_length=64",
            "training.max_steps=30": "training.max_steps=2",
            "evaluation.max_examples_per_task=5": "evaluation.max_examples_per_task=1 evaluation.max_new_tokens=2",
        },
    )
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((tmp_path / "mix.jsonl").read_text().splitlines()) == 180  # 60 x 3 tasks
    metrics = json.loads((tmp_path / "runs" / "own-tasks" / "metrics.json").read_text())
    assert sorted(metrics["tasks"]) == ["add_one", "first_word", "last_word"]
    assert "add_one" in done.stdout and "first_word" in done.stdout  # data check and the score table


def test_the_abridged_sweep_file_of_usage_agrees_with_the_shipped_one():
    import yaml

    (block,) = [b for b in fenced_blocks("docs/usage.md", "yaml") if "(abridged)" in b]
    shown = yaml.safe_load(block)
    path = REPO / block.splitlines()[0].split()[1]  # "# configs/sweeps/smollm2_cpu.yaml (abridged)"
    shipped = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in shown.items():
        if key == "overrides":  # abridged: the overrides shown are among the file's, with its values
            assert value.items() <= shipped["overrides"].items()
        else:
            assert shipped[key] == value, key
