"""The methods a run can train, their settings (the ``method:`` section of a run config), and the PEFT
configuration each one becomes, so that every method is trained by the same loop.

BADIT and its ablations use ``badit.BaditConfig``; the LoRA family uses PEFT's own ``LoraConfig``
with rank K*r (the same number of adapter components as BADIT's K experts of rank r), the same
target modules and dropout, and by default the alpha that gives each component BADIT's scale
(``baseline_alpha``; docs/method.md, "Step sizes"). The LoRA baselines have no router, so they have slightly fewer
trainable parameters (K * in_features per layer fewer).

Defaults and checks of the shared fields live in one place, ``BaditConfig``: ``MethodConfig`` takes
its defaults from there, and ``check_method`` validates by building the BaditConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from peft import LoraConfig, PeftConfig, TaskType

from badit.adapter import BaditConfig, HydraLoraConfig
from badit.names import CONTINUAL_METHODS, HYDRALORA, LORA_METHODS, METHODS, MIXTURE_METHODS

# The method names and what each one is: badit.names (torch-free, so that configs are checked at once).

_BADIT_FIELDS = {f.name: f for f in dataclasses.fields(BaditConfig)}


def _badit_default(name: str):
    """``field(...)`` with BaditConfig's default for ``name``."""
    default = _BADIT_FIELDS[name]
    if default.default_factory is not dataclasses.MISSING:
        return field(default_factory=default.default_factory)
    return field(default=default.default)


@dataclass
class MethodConfig:
    name: str = "badit"
    """One of ``METHODS``: badit, svd-moe, loramoe, lora, pissa, olora, hydralora; continual only: o-lora,
    inflora, gainlora."""
    r: int = _badit_default("r")
    """Rank per expert (LoRA baselines use rank num_experts * r; hydralora: the shared A's rank)."""
    num_experts: int = _badit_default("num_experts")
    """Experts K (hydralora: its number of B heads)."""
    top_k: int | None = _badit_default("top_k")
    """Experts per sequence; null (default): ``num_experts``, all of them (BaditConfig's dense routing),
    whatever num_experts is set to."""
    lora_alpha: float = _badit_default("lora_alpha")
    """Scaling numerator: each rank-1 component of an expert is scaled by ``lora_alpha / r``."""
    lora_baseline_alpha: float | None = None
    """``lora``/``pissa``/``olora`` (rank K*r): their alpha. None: ``lora_alpha * num_experts``, which gives
    every component the same scale ``lora_alpha / r`` as BADIT's (docs/method.md, "Step sizes")."""
    lora_dropout: float = _badit_default("lora_dropout")
    target_modules: list[str] | str = _badit_default("target_modules")
    """Module names, a regular expression, or ``all-linear``."""
    router_scale: Literal["preserve", "paper"] = _badit_default("router_scale")
    """``preserve``: K * softmax (each expert's weight starts at 1); ``paper``: softmax (1/K), K times
    smaller updates in output at the same learning rate (docs/method.md, "Step sizes")."""
    router_init: Literal["zero", "random"] = _badit_default("router_init")
    """``random``: nn.Linear's init, as in the public code (docs/method.md, "The published variant")."""
    train_router: bool = _badit_default("train_router")
    """``false``: the router is never trained, as in the public code."""
    gate: Literal["delta", "components"] = _badit_default("gate")
    """What the mixing weights scale: ``delta`` (default) only the learned change B A - B0 A0, so routing
    cannot damage the pretrained function; ``components`` the whole experts, as the paper's forward
    (docs/method.md, "Routing")."""
    router_input: Literal["standardized", "raw"] = _badit_default("router_input")
    """``standardized``: the router sees the pooled prompt minus its running mean over its running standard
    deviation per feature (what sets a sequence apart from the average one); ``raw``: as the paper."""
    routing: Literal["router", "task"] = _badit_default("routing")
    """``router`` (learned, per sequence) or ``task``: oracle routing, one learned mixture per task id,
    known at train and test time (the upper bound of what routing can buy; mixtures only)."""
    svd_method: Literal["randomized", "exact"] = _badit_default("svd_method")
    regroup_every: int | str = _badit_default("regroup_every")
    """``epoch`` or a number of optimizer steps."""
    regroup_until: float = _badit_default("regroup_until")
    """Fraction of training during which regrouping happens."""
    regroup_ema: float | None = _badit_default("regroup_ema")
    regroup_signal: Literal["sum", "last_batch"] = _badit_default("regroup_signal")
    """``sum``: gradients since the last regroup; ``last_batch``: only the last backward pass's (public code)."""
    regroup_similarity: Literal["sign_invariant", "signed"] = _badit_default("regroup_similarity")
    """``sign_invariant``: components compared by |cos| (their SVD sign is arbitrary); ``signed``: as published."""
    regroup_assignment: Literal["kmeans", "random"] = _badit_default("regroup_assignment")
    """``kmeans``: BADIT's regrouping; ``random``: a random permutation at every regroup (the control that
    separates what the gradient clusters buy from moving components at all)."""
    router_lr_multiplier: float = 1.0
    """The routers' learning rate is ``training.learning_rate`` times this (mixtures and hydralora; 1: the same).
    A zero-initialised router moves slowly at an adapter's learning rate (docs/benchmarks.md)."""
    # Continual methods (o-lora, inflora, gainlora); defaults from the papers' public code (docs/method.md)
    orthogonality_weight: float = 0.5
    """O-LoRA's lambda_1: weight of ``sum_layers |A_old A_new^T|_1`` in the loss (O-LoRA's scripts: 0.5)."""
    l2_weight: float = 0.0
    """O-LoRA's lambda_2: weight of the new branch's L2 norm in the loss (O-LoRA's scripts: 0)."""
    subspace_threshold: float = 0.995
    """InfLoRA: share of a task's layer-input energy its subspace keeps (GainLoRA's SuperNI scripts: 0.995)."""
    subspace_energy: Literal["paper", "code"] = "paper"
    """``paper``: GPM's energy (eigenvalues of the input covariance); ``code``: their squares, as the
    InfLoRA/GainLoRA code computes it (docs/method.md)."""
    subspace_examples: int | None = None
    """InfLoRA: training examples read to measure a task's layer inputs (None: all of the stage's)."""
    gainlora_base: Literal["inflora", "o-lora"] = "inflora"
    """GainLoRA: the method its branches follow (the paper reports both)."""
    gate_hidden: int = 100
    """GainLoRA: hidden width of each task's gate (GainLoRA's scripts: ``mlp_hidden_dim 100``)."""
    gate_renormalise: bool = False
    """GainLoRA: rescale the gate's rows after the projected step, as GainLoRA's code does (inexact)."""


def mixture_config(method: MethodConfig, num_tasks: int | None = None) -> BaditConfig:
    """The BaditConfig of ``method``: every field the two share is passed on by name (no list to keep in
    step), plus the init and regrouping that the method name implies; ``num_tasks``: the run's task ids,
    which oracle routing (``routing: task``) needs."""
    shared = {
        f.name: getattr(method, f.name) for f in dataclasses.fields(MethodConfig) if f.name in _BADIT_FIELDS
    }
    return BaditConfig(
        task_type=TaskType.CAUSAL_LM,
        init=MIXTURE_METHODS.get(method.name, "svd"),
        regroup=uses_regrouping(method),
        num_tasks=num_tasks if method.routing == "task" else None,
        **shared,
    )


def check_method(method: MethodConfig) -> None:
    """Raise ValueError when ``method`` is unusable: an unknown name, or fields that BaditConfig refuses
    (checked for the LoRA methods too, since they read r, num_experts, alpha, dropout and targets)."""
    if method.name not in METHODS:
        raise ValueError(f"method.name {method.name!r} is unknown; use one of {', '.join(METHODS)}")
    if not (
        isinstance(method.router_lr_multiplier, (int, float))
        and 0 < method.router_lr_multiplier < float("inf")
    ):
        raise ValueError(
            f"method.router_lr_multiplier must be a positive finite number, got {method.router_lr_multiplier!r}"
        )
    if method.lora_baseline_alpha is not None and not method.lora_baseline_alpha > 0:
        raise ValueError(
            f"method.lora_baseline_alpha must be positive or null (matched scale), got {method.lora_baseline_alpha}"
        )
    if method.routing != "router" and method.name not in MIXTURE_METHODS:
        raise ValueError(
            f"method.routing {method.routing!r} is for the mixtures ({', '.join(MIXTURE_METHODS)}); "
            f"{method.name} has no router: leave method.routing at 'router'"
        )
    if method.name in CONTINUAL_METHODS:
        _check_continual(method)
    mixture_config(method, num_tasks=1)  # any count: the run's is known once its data is read


def _check_continual(method: MethodConfig) -> None:
    for name in ("orthogonality_weight", "l2_weight"):
        value = getattr(method, name)
        if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
            raise ValueError(f"method.{name} must be a finite number >= 0, got {value!r}")
    if not 0 < method.subspace_threshold < 1:
        raise ValueError(f"method.subspace_threshold must be in (0, 1), got {method.subspace_threshold}")
    if method.subspace_energy not in ("paper", "code"):
        raise ValueError(f"method.subspace_energy must be paper or code, got {method.subspace_energy!r}")
    if method.gainlora_base not in ("inflora", "o-lora"):
        raise ValueError(f"method.gainlora_base must be inflora or o-lora, got {method.gainlora_base!r}")
    if method.gate_hidden < 1:
        raise ValueError(f"method.gate_hidden must be at least 1, got {method.gate_hidden}")
    if method.subspace_examples is not None and method.subspace_examples < 1:
        raise ValueError(
            f"method.subspace_examples must be at least 1 or null, got {method.subspace_examples}"
        )


def build_peft_config(method: MethodConfig, num_tasks: int | None = None) -> PeftConfig:
    """The PEFT config that ``get_peft_model`` turns into the method's adapter (``num_tasks``: the run's
    task ids, for oracle routing)."""
    check_method(method)
    if method.name in MIXTURE_METHODS:
        return mixture_config(method, num_tasks)
    if method.name == HYDRALORA:
        return HydraLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=method.r,
            num_heads=method.num_experts,
            lora_alpha=method.lora_alpha,
            lora_dropout=method.lora_dropout,
            target_modules=method.target_modules,
        )
    return _lora_config(method)


def _lora_config(method: MethodConfig) -> LoraConfig:
    """Rank K*r. A continual method's first branch is this config; ``badit.training.continual`` grows it."""
    init = LORA_METHODS.get(method.name, True)
    if init == "pissa" and method.svd_method == "randomized":
        # PEFT's fast PiSSA: randomized SVD with 16 power iterations (PEFT's documented choice).
        init = "pissa_niter_16"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method.num_experts * method.r,
        lora_alpha=baseline_alpha(method),
        lora_dropout=method.lora_dropout,
        target_modules=method.target_modules,
        init_lora_weights=init,
    )


def baseline_alpha(method: MethodConfig) -> float:
    """The LoRA family's alpha: ``lora_baseline_alpha``, or by default ``lora_alpha * num_experts`` so that
    its per-component scale ``alpha / (K r)`` equals BADIT's ``lora_alpha / r``."""
    if method.lora_baseline_alpha is not None:
        return method.lora_baseline_alpha
    return method.lora_alpha * method.num_experts


def effective_scale(method: MethodConfig) -> float:
    """The multiplier of one rank-1 component's contribution to a layer's output at initialisation.

    LoRA family: ``alpha / (K r)``. Mixtures: ``lora_alpha / r`` times the expert's initial router
    weight: about 1 with ``router_scale: preserve``, 1/K with ``paper`` (a uniform softmax). HydraLoRA:
    ``lora_alpha / r`` (its heads share A and their router weights sum to 1; ``router_scale`` is not
    its field). Formulas and numbers at the defaults: docs/method.md, "Step sizes".
    """
    if method.name in LORA_METHODS or method.name in CONTINUAL_METHODS:
        # continual methods: alpha grows with the branches (t * alpha for rank t*K*r), the same per component
        return baseline_alpha(method) / (method.num_experts * method.r)
    if method.name == HYDRALORA:
        return method.lora_alpha / method.r
    weight = 1.0 if method.router_scale == "preserve" else 1.0 / method.num_experts
    return method.lora_alpha / method.r * weight


def uses_regrouping(method: MethodConfig) -> bool:
    return method.name == "badit"
