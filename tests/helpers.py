"""Test helpers shared by the test files: tiny random-weight causal LMs built in code (no downloads),
a character-level tokenizer, a tiny model folder on disk, and a tiny run config."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    TrainerCallback,
)

FAMILIES = ("llama", "qwen3", "gemma2")

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def make_tiny_model(family: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A 2-layer causal LM of the given family with random weights, float32, eval mode."""
    torch.manual_seed(seed)
    kw = {**_COMMON, **overrides}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **kw))
    elif family == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(head_dim=16, sliding_window=64, **kw))
    else:
        raise ValueError(f"unknown family {family!r}")
    # Random init uses std 0.02: scale up so the spectrum is not flat and logits are not all ~0.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model.float().eval()


SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3 match the tiny models' pad/bos/eos ids
CHARS = string.ascii_letters + string.digits + " \n.,:;-?!'()"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (vocabulary of 79 < the tiny models' 128)."""
    vocab = {token: i for i, token in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_model(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """A tiny random causal LM and the character tokenizer, saved as a Hugging Face model folder."""
    model = make_tiny_model(family, seed=seed, max_position_embeddings=512)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def tiny_run_config(
    root: Path, method_name: str = "lora", setting_name: str = "multitask", **sections
) -> dict:
    """A run config (as a dict) for a tiny model on two conflicting demo tasks, built under ``root``.

    ``sections`` update the config sections, e.g. ``training={"max_steps": 4}``.
    """
    from badit.data.synthetic import write_demo_tasks

    model_dir, data_dir = root / "model", root / "data"
    if not model_dir.is_dir():
        save_tiny_model(model_dir)
    if not data_dir.is_dir():
        write_demo_tasks(
            data_dir, train_per_task=24, test_per_task=3, tasks=["demo_copy_words", "demo_reverse_words"]
        )
    config = {
        "name": f"tiny-{method_name}-{setting_name}",
        "setting": setting_name,
        "output_dir": str(root / f"run-{method_name}-{setting_name}"),
        "seed": 0,
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data_dir), "max_source_length": 120, "max_target_length": 24},
        "method": {"name": method_name, "r": 2, "num_experts": 3, "top_k": 3, "lora_dropout": 0.0},
        "training": {
            "max_steps": 6,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.0,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 100,
            "report_to": [],
        },
        "evaluation": {"max_new_tokens": 6, "batch_size": 8},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config[section] = {**config.get(section, {}), **values}
        else:
            config[section] = values
    return config


class SimulatedKill(Exception):
    pass


class KillAfterSave(TrainerCallback):
    """Stops training right after the checkpoint of step ``step`` is written (as a kill would)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise SimulatedKill


REPO = Path(__file__).resolve().parents[1]


def doc_block(doc: str, heading: str, language: str = "python") -> str:
    """The first fenced ``language`` block after the heading ``heading`` of ``doc`` (README.md,
    docs/usage.md), so that a test runs the code a user pastes."""
    text = (REPO / doc).read_text(encoding="utf-8")
    start = text.index(f"{heading}\n")
    fence = f"```{language}\n"
    begin = text.index(fence, start) + len(fence)
    return text[begin : text.index("```", begin)]


def substitute(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each key replaced by its value (tiny sizes, local paths); each key must occur, so
    that a change of the docs shows up here instead of silently testing something else."""
    for old, new in replacements.items():
        assert old in code, f"the docs block no longer contains {old!r}"
        code = code.replace(old, new)
    return code


def write_mix(path: Path, several_answers: bool = False) -> None:
    """Own data as JSONL: two tasks on the same inputs (copy / reverse a word), 12 rows each; with
    `several_answers` each reverse row accepts the reversed word in lower or upper case."""
    words = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx"]
    rows = [{"task": "copy", "prompt": f"copy {w}:", "completion": w} for w in words]
    rows += [
        {
            "task": "reverse",
            "prompt": f"reverse {w}:",
            "completion": [w[::-1], w[::-1].upper()] if several_answers else w[::-1],
        }
        for w in words
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def hand_run(
    folder: Path,
    method: str,
    setting: str,
    seed: int,
    scores: dict[str, float],
    lr: float = 1e-4,
    split: str = "test",
    options: dict | None = None,
) -> Path:
    """A minimal run folder: config.yaml (``options``: its method section) and a metrics.json with the given
    ROUGE-L (EM = ROUGE-L / 2)."""
    folder.mkdir(parents=True)
    config = {"name": folder.name, "training": {"learning_rate": lr}, "evaluation": {"split": split}}
    if options is not None:
        config["method"] = {"name": method, **options}
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    tasks = {t: {"rougeL": v, "exact_match": v / 2, "num_examples": 10} for t, v in scores.items()}
    average = {m: sum(s[m] for s in tasks.values()) / len(tasks) for m in ("rougeL", "exact_match")}
    run = {"name": folder.name, "method": method, "setting": setting, "model": "m", "seed": seed}
    (folder / "metrics.json").write_text(json.dumps({"tasks": tasks, "average": average, "run": run}))
    return folder


def write_sweep(folder: Path, base: dict | str, **fields) -> Path:
    """``folder/base.yaml`` (``base``: a run config dict, or YAML text) and ``folder/sweep.yaml`` over
    it, writing into ``folder/sweep``: one lora run at lr 1e-4 and seed 1 unless ``fields`` say otherwise."""
    (folder / "base.yaml").write_text(base if isinstance(base, str) else yaml.safe_dump(base))
    sweep = {
        "base": "base.yaml",
        "output_dir": str(folder / "sweep"),
        "methods": ["lora"],
        "learning_rates": [1e-4],
        "seeds": [1],
        **fields,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path
