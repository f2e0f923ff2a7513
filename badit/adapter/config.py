"""`BaditConfig`: the PEFT configuration of a BADIT adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from badit.adapter.peft_type import badit_peft_type
from badit.regrouping.core import DEFAULT_KMEANS_ITERS

INITS = ("svd", "random")
SVD_METHODS = ("randomized", "exact")
ROUTER_SCALES = ("preserve", "paper")
ROUTER_INITS = ("zero", "random")
REGROUP_SIGNALS = ("sum", "last_batch")
REGROUP_SIMILARITIES = ("sign_invariant", "signed")
GATES = ("delta", "components")
ROUTINGS = ("router", "task")
ROUTER_INPUTS = ("standardized", "raw")
REGROUP_ASSIGNMENTS = ("kmeans", "random")


@dataclass
class BaditConfig(PeftConfig):
    """Configuration of BADIT: K orthogonal low-rank experts from the SVD of each target weight, mixed per
    sequence by a router (arXiv 2605.05676).

    Args:
        r: rank of each expert.
        num_experts: number of experts K; the adapter uses the top K*r singular directions of each weight.
        top_k: experts kept per sequence; None (default) or `num_experts` is the paper's dense routing.
        lora_alpha: scaling numerator; the adapter output is multiplied by `lora_alpha / r`.
        lora_dropout: dropout on the adapter input.
        target_modules: module names (a list), a regex (a str) or "all-linear"; `torch.nn.Linear` layers and GPT-2's `Conv1D`.
        exclude_modules: module names or a regex never adapted.
        init: "svd" (BADIT: experts are consecutive blocks of the top singular triplets; expert 0 holds the
            largest) or "random" (LoRAMoE-style baseline: random A, zero B).
        svd_method: "randomized" (fast range finder, default) or "exact" (`torch.linalg.svd`).
        svd_oversample: extra random directions of the randomized SVD (beyond K*r).
        svd_niter: power iterations of the randomized SVD.
        router_scale: "preserve" multiplies the softmax mixing weights by K, so a zero-initialised dense router
            reproduces the pretrained layer exactly; "paper" keeps the plain softmax of the public code.
        router_init: "zero" (default: every expert starts with the same weight) or "random" (PyTorch's
            nn.Linear init, as the public code leaves it).
        gate: what the mixing weights multiply: "delta" (default) only what training changed, B A - B0 A0,
            so the pretrained components keep weight 1 and routing cannot damage the pretrained function;
            "components" the whole expert B A, the SVD components included (the paper's and the public
            code's forward). Identical while every weight is 1; docs/method.md, "Routing".
        routing: "router" (default: a learned router on the pooled prompt) or "task" (oracle routing: one
            learned mixture per task id, given at train and test time with `badit.routing_tasks`; the
            upper bound of what routing can buy, not a method for unknown tasks).
        num_tasks: the number of task ids, for routing="task".
        router_input: "standardized" (default): the pooled prompt minus its running mean, over its running
            standard deviation, per feature (the part that sets a sequence apart), or "raw" (the pooled
            prompt as it is: the paper's).
        train_router: False freezes the router (the public code's gate is never trained: its parameter
            name lacks PEFT's trainable prefix).
        regroup: gather gradient statistics and regroup rank-1 components between experts during training.
        regroup_every: "epoch" or a number of optimizer steps between regroups.
        regroup_until: fraction of training during which regrouping happens.
        regroup_ema: None (sum of gradients since the last regroup) or an EMA decay in (0, 1).
        regroup_signal: "sum" (default: the gradients of every backward pass since the last regroup, or
            their EMA) or "last_batch" (only the last backward pass's, as the public code keeps it).
        regroup_kmeans_iters: iterations of the balanced spherical k-means.
        regroup_assignment: "kmeans" (default: BADIT's balanced spherical k-means on gradient directions)
            or "random" (the control: a random permutation of the components at every regroup).
        regroup_similarity: "sign_invariant" (default: components compared by |cos| of their gradient
            rows, so a component's arbitrary SVD sign does not decide its expert) or "signed" (the
            published signed cosine); docs/method.md, "Sign-invariant regrouping".
    """

    r: int = field(default=4, metadata={"help": "Rank of each expert."})
    num_experts: int = field(default=6, metadata={"help": "Number of experts K."})
    top_k: int | None = field(
        default=None, metadata={"help": "Experts used per sequence; None: num_experts (dense routing)."}
    )
    lora_alpha: float = field(default=32, metadata={"help": "Scaling numerator: scaling = lora_alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    target_modules: list[str] | str | None = field(
        default_factory=lambda: ["gate_proj"],
        metadata={"help": "Module names, a regex, or 'all-linear'. Default: the MLP gate projection."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    init: Literal["svd", "random"] = field(default="svd", metadata={"help": "'svd' (BADIT) or 'random'."})
    svd_method: Literal["randomized", "exact"] = field(
        default="randomized", metadata={"help": "SVD algorithm."}
    )
    svd_oversample: int = field(default=40, metadata={"help": "Oversampling of the randomized SVD."})
    svd_niter: int = field(default=10, metadata={"help": "Power iterations of the randomized SVD."})
    router_scale: Literal["preserve", "paper"] = field(
        default="preserve", metadata={"help": "'preserve' (K * softmax) or 'paper' (softmax)."}
    )
    router_init: Literal["zero", "random"] = field(
        default="zero", metadata={"help": "'zero' (uniform start) or 'random' (nn.Linear's init)."}
    )
    train_router: bool = field(default=True, metadata={"help": "False: the router stays at its init."})
    gate: Literal["delta", "components"] = field(
        default="delta",
        metadata={"help": "'delta' (the router gates B A - B0 A0) or 'components' (B A: the paper's)."},
    )
    routing: Literal["router", "task"] = field(
        default="router",
        metadata={"help": "'router' (learned, per sequence) or 'task' (oracle: per task id)."},
    )
    num_tasks: int | None = field(default=None, metadata={"help": "Task ids for routing='task'."})
    router_input: Literal["standardized", "raw"] = field(
        default="standardized",
        metadata={
            "help": "'standardized' (running per-feature moments) or 'raw' (the paper's pooled prompt)."
        },
    )
    regroup: bool = field(default=True, metadata={"help": "Regroup rank-1 components during training."})
    regroup_every: str | int = field(default="epoch", metadata={"help": "'epoch' or a number of steps."})
    regroup_until: float = field(default=0.5, metadata={"help": "Fraction of training with regrouping."})
    regroup_ema: float | None = field(default=None, metadata={"help": "None (sum) or an EMA decay."})
    regroup_signal: Literal["sum", "last_batch"] = field(
        default="sum", metadata={"help": "'sum' (since the last regroup) or 'last_batch'."}
    )
    regroup_kmeans_iters: int = field(
        default=DEFAULT_KMEANS_ITERS, metadata={"help": "Balanced spherical k-means iterations."}
    )
    regroup_similarity: Literal["sign_invariant", "signed"] = field(
        default="sign_invariant",
        metadata={
            "help": "'sign_invariant' (|cos|: a component's sign does not matter) or 'signed' (published)."
        },
    )
    regroup_assignment: Literal["kmeans", "random"] = field(
        default="kmeans", metadata={"help": "'kmeans' (BADIT) or 'random' (a random-permutation control)."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules trained and saved."}
    )
    task_type: str | None = field(
        default=None,
        metadata={"help": "PEFT task type, as in LoraConfig: None (any nn.Module) or e.g. 'CAUSAL_LM'."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = badit_peft_type()
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = list(self.target_modules)
        if self.top_k is None and isinstance(self.num_experts, int):
            self.top_k = self.num_experts
        self._validate()

    def _validate(self) -> None:
        def fail(field_name: str, problem: str, fix: str) -> None:
            raise ValueError(f"BaditConfig.{field_name}={getattr(self, field_name)!r} {problem}; {fix}.")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.r) or self.r < 1:
            fail("r", "is not a positive integer", "set r (the rank of each expert) to 1 or more")
        if not is_int(self.num_experts) or self.num_experts < 1:
            fail("num_experts", "is not a positive integer", "set num_experts (K) to 1 or more")
        if not is_int(self.top_k) or not 1 <= self.top_k <= self.num_experts:
            fail(
                "top_k",
                f"is not in [1, num_experts={self.num_experts}]",
                "set top_k between 1 and num_experts",
            )
        if not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            fail("lora_alpha", "is not a positive number", "set lora_alpha > 0 (scaling = lora_alpha / r)")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            fail("lora_dropout", "is not in [0, 1)", "set lora_dropout to a probability such as 0.05")
        if self.init not in INITS:
            fail("init", f"is not one of {INITS}", "use 'svd' (BADIT) or 'random' (LoRAMoE-style baseline)")
        if self.svd_method not in SVD_METHODS:
            fail("svd_method", f"is not one of {SVD_METHODS}", "use 'randomized' (default) or 'exact'")
        if not is_int(self.svd_oversample) or self.svd_oversample < 0:
            fail("svd_oversample", "is not a non-negative integer", "use e.g. 40")
        if not is_int(self.svd_niter) or self.svd_niter < 0:
            fail("svd_niter", "is not a non-negative integer", "use e.g. 10")
        if self.router_scale not in ROUTER_SCALES:
            fail("router_scale", f"is not one of {ROUTER_SCALES}", "use 'preserve' (default) or 'paper'")
        if self.target_modules is None or (
            not isinstance(self.target_modules, str) and len(self.target_modules) == 0
        ):
            fail(
                "target_modules", "is empty", "name the modules to adapt, e.g. ['gate_proj'] or 'all-linear'"
            )
        if not (self.regroup_every == "epoch" or (is_int(self.regroup_every) and self.regroup_every >= 1)):
            fail("regroup_every", "is neither 'epoch' nor a positive integer", "use 'epoch' or a step count")
        if not isinstance(self.regroup_until, (int, float)) or not 0 <= self.regroup_until <= 1:
            fail(
                "regroup_until", "is not in [0, 1]", "give the fraction of training with regrouping, e.g. 0.5"
            )
        if self.regroup_ema is not None and (
            not isinstance(self.regroup_ema, (int, float)) or not 0 < self.regroup_ema < 1
        ):
            fail("regroup_ema", "is not None or a decay in (0, 1)", "use None (plain sum) or e.g. 0.9")
        if self.router_init not in ROUTER_INITS:
            fail("router_init", f"is not one of {ROUTER_INITS}", "use 'zero' (default) or 'random'")
        if not isinstance(self.train_router, bool):
            fail("train_router", "is not true or false", "use true (default) or false")
        if self.gate not in GATES:
            fail("gate", f"is not one of {GATES}", "use 'delta' (default) or 'components' (the paper's)")
        if self.routing not in ROUTINGS:
            fail("routing", f"is not one of {ROUTINGS}", "use 'router' (default) or 'task' (oracle routing)")
        if self.routing == "task" and (not is_int(self.num_tasks) or self.num_tasks < 1):
            fail("num_tasks", "is not a positive integer with routing='task'", "give the number of task ids")
        if self.router_input not in ROUTER_INPUTS:
            fail(
                "router_input", f"is not one of {ROUTER_INPUTS}", "use 'standardized' or 'raw' (the paper's)"
            )
        if self.regroup_signal not in REGROUP_SIGNALS:
            fail("regroup_signal", f"is not one of {REGROUP_SIGNALS}", "use 'sum' (default) or 'last_batch'")
        if self.regroup_signal == "last_batch" and self.regroup_ema is not None:
            fail("regroup_ema", "is set with regroup_signal 'last_batch'", "set one of the two")
        if not is_int(self.regroup_kmeans_iters) or self.regroup_kmeans_iters < 1:
            fail("regroup_kmeans_iters", "is not a positive integer", "use e.g. 20")
        if self.regroup_assignment not in REGROUP_ASSIGNMENTS:
            fail(
                "regroup_assignment",
                f"is not one of {REGROUP_ASSIGNMENTS}",
                "use 'kmeans' (default) or 'random'",
            )
        if self.regroup_similarity not in REGROUP_SIMILARITIES:
            fail(
                "regroup_similarity",
                f"is not one of {REGROUP_SIMILARITIES}",
                "use 'sign_invariant' (default) or 'signed' (the published cosine)",
            )

    @classmethod
    def check_kwargs(cls, **kwargs):
        """An adapter_config.json written before `gate` and `router_input` existed was trained with the whole
        experts gated and the raw pooled prompt: it loads with those, so that it computes what it computed."""
        kwargs = super().check_kwargs(**kwargs)
        if "gate" not in kwargs:
            kwargs["gate"] = "components"
        if "router_input" not in kwargs:
            kwargs["router_input"] = "raw"
        return kwargs

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """PEFT's adapter_config.json, then the BADIT section of the model card (badit/adapter/card.py)."""
        super().save_pretrained(save_directory, **kwargs)
        from badit.adapter.card import write_model_card

        write_model_card(save_directory, self)

    @property
    def scaling(self) -> float:
        """Multiplier of the adapter output: lora_alpha / r."""
        return self.lora_alpha / self.r
