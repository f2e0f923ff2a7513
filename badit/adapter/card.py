"""The model card (README.md) of a saved BADIT adapter: what a stranger needs to load or serve it.

PEFT's `save_pretrained` writes a generic card first (metadata: library, tags, base model), then saves each
adapter's config; `BaditConfig.save_pretrained` then calls `write_model_card`, which adds a BADIT section
between markers (replaced, never duplicated, on a later save) and puts the base model's public name in the
metadata. Card parsing and metadata are huggingface_hub's `ModelCard`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

BEGIN, END = "<!-- badit:begin -->", "<!-- badit:end -->"

PUBLIC_NAMES = {
    # Folder that badit/training/model_loading.py converts the embedded GGUF model into.
    "SmolLM2-135M-Instruct-from-Q4_1": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
"""Local model folders badit creates itself -> the public Hugging Face id of the model they hold."""


def public_model_name(name_or_path: str | None) -> str | None:
    """The Hugging Face id for a model badit converted locally; any other name unchanged."""
    if not name_or_path:
        return name_or_path
    return PUBLIC_NAMES.get(Path(str(name_or_path).rstrip("/\\")).name, name_or_path)


def badit_section(config, tasks: Mapping[str, float | None] | None = None, metric: str = "ROUGE-L") -> str:
    """The markdown BADIT section for adapter config `config`; `tasks`: task -> score (None when unscored)."""
    from badit import __version__

    base = public_model_name(config.base_model_name_or_path) or "(not recorded)"
    targets = (
        config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules)
    )
    lines = [
        BEGIN,
        "## BADIT adapter",
        "",
        f"A [BADIT](https://arxiv.org/abs/2605.05676) adapter made with badit {__version__}: each targeted linear "
        f"layer holds K = {config.num_experts} LoRA experts of rank r = {config.r} taken from its top "
        f"{config.num_experts * config.r} singular directions, mixed per sequence by a router.",
        "",
        "It is not a plain LoRA: PEFT needs `import badit` first (otherwise `KeyError: 'BADIT'`).",
        "",
        "```python",
        f"import badit  # badit {__version__}: registers BADIT with PEFT",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "path/to/this/folder")',
        "```",
        "",
        "To serve it where plain LoRA is served (vLLM, TGI, PEFT without badit), export it with a fixed routing: "
        "`badit export` or `badit.adapter.export.export_lora` (an exact LoRA of rank 2*K*r).",
        "",
        f"- base model: `{base}`",
        f"- target modules: {', '.join(f'`{t}`' for t in targets) if isinstance(targets, list) else f'`{targets}`'}",
        f"- experts K = {config.num_experts}, rank per expert r = {config.r}, experts per sequence "
        f"top_k = {config.top_k}, lora_alpha = {config.lora_alpha}, router_scale = {config.router_scale}",
        f"- regrouping: {'on' if config.regroup else 'off'}",
    ]
    if tasks:
        lines += ["", f"| task trained | {metric} |", "|---|---:|"]
        lines += [
            f"| {task} | {'' if score is None else f'{score:.2f}'} |" for task, score in sorted(tasks.items())
        ]
    lines.append(END)
    return "\n".join(lines)


def write_model_card(
    directory: str | os.PathLike,
    config,
    tasks: Mapping[str, float | None] | None = None,
    metric: str = "ROUGE-L",
) -> Path:
    """Add (or replace) the BADIT section of `directory`/README.md; set its `base_model` to the public name."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(directory) / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = "peft"
    base = public_model_name(config.base_model_name_or_path)
    # PEFT tags the card "base_model:adapter:<name>" with the local path: use the public name there too.
    tags = {t for t in card.data.get("tags") or [] if not t.startswith("base_model:adapter:")}
    tags |= {"badit", "peft", "lora"} | ({f"base_model:adapter:{base}"} if base else set())
    card.data["tags"] = sorted(tags)
    if base:
        card.data["base_model"] = base
    text = card.text
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + text[text.index(END) + len(END) :]
    text = badit_section(config, tasks, metric) + "\n\n" + text.strip("\n") + "\n"
    content = f"---\n{card.data.to_yaml()}\n---\n{text}"
    handle, temporary = tempfile.mkstemp(prefix=".README-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(content)
        os.replace(temporary, path)
    except OSError as error:
        os.unlink(temporary)  # our own temporary file, never the card
        if error.filename is None:  # a failed write (disk full) names no file: name the card
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    return path
