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

SUPERNI_BENCHMARK = (
    "task002_quoref_answer_generation",
    "task073_commonsenseqa_answer_generation",
    "task181_outcome_extraction",
    "task363_sst2_polarity_classification",
    "task511_reddit_tifu_long_text_summarization",
    "task591_sciq_answer_generation",
    "task639_multi_woz_user_utterance_generation",
    "task748_glucose_reverse_cause_event_detection",
    "task875_emotion_classification",
    "task1290_xsum_summarization",
    "task1510_evalution_relation_extraction",
    "task1572_samsum_summary",
    "task1590_diplomacy_text_generation",
    "task1687_sentiment140_classification",
    "task1729_personachat_generate_next",
)
"""The 15 SuperNI tasks of the continual benchmark BADIT evaluates on (O-LoRA's and SAPT's long-sequence
SuperNI benchmark), each 1000 train / 100 dev / 100 test in their split; `badit data fetch --benchmark
superni15` downloads them (a seeded split of the same tasks, not their exact instances)."""
