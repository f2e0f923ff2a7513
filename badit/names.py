"""The name lists a config or a command is checked against, in one module that imports nothing (no torch,
no PEFT), so that ``badit train bad.yaml`` reports a wrong name at once and ``badit --help`` lists them.

Each list belongs to the code that implements the names (settings: ``badit.experiments.settings``;
methods: ``badit.training.methods``; data formats: ``badit.data.sources``; metrics:
``badit.evaluation``); those modules take the names from here, and a test checks that every name has
its implementation (tests/test_cli_startup.py).
"""

from __future__ import annotations

SETTINGS = ("multitask", "single", "continual")
"""multitask (all tasks jointly), single (one adapter per task), continual (tasks in order)."""

MIXTURE_METHODS = {"badit": "svd", "svd-moe": "svd", "loramoe": "random"}
"""method name -> ``BaditConfig.init`` (``badit``: SVD experts + regrouping; ``svd-moe``: without
regrouping; ``loramoe``: random experts, no regrouping: the LoRAMoE variant of the BADIT code,
per-sequence dense routing without balancing loss, not Dou et al.'s token-level LoRAMoE)."""
LORA_METHODS = {"lora": True, "pissa": "pissa", "olora": "olora"}
"""method name -> ``LoraConfig.init_lora_weights`` (PEFT's LoRA with rank K*r)."""
HYDRALORA = "hydralora"
"""HydraLoRA (badit.adapter.hydralora): a shared A of rank r and num_experts B heads mixed per token."""
CONTINUAL_METHODS = ("o-lora", "inflora", "gainlora")
"""Continual methods (``setting: continual`` only): one LoRA branch of rank K*r per task in one PEFT LoRA
adapter (``badit.training.continual``; docs/method.md, "Continual baselines")."""
METHODS = (*MIXTURE_METHODS, *LORA_METHODS, HYDRALORA, *CONTINUAL_METHODS)
"""The one list of method names (``method.name``)."""

GRADIENT_SURGERIES = ("none", "pcgrad")
"""``training.gradient_surgery`` (badit.training.gradient_surgery). In ``badit sweep``'s ``methods``,
``NAME+pcgrad`` is method NAME trained with it (the run's label, badit.experiments.folder.method_label)."""

DATA_FORMATS = ("auto", "superni", "jsonl", "csv", "datasets")
"""``data.format``: ``auto`` recognises the format from ``data.path``."""

METRICS = {"rougeL": "ROUGE-L", "exact_match": "EM"}
"""The scores of every prediction (``metrics.json``), with their short names in tables."""

MERGE_METHODS = ("ties", "task-arithmetic")
"""``badit merge --method``: TIES-Merging or task arithmetic of a single run's LoRAs (badit.experiments.merge)."""

EXPORT_FORMATS = ("lora", "merged")
"""``badit export --format``: a plain PEFT LoRA folder, or the merged full model."""

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""The name under which configs refer to the embedded default model."""
