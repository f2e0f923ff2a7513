"""The PEFT configuration of each method, so that every method is trained by the same loop.

BADIT and its ablations use ``badit.BaditConfig``; the LoRA family uses PEFT's own ``LoraConfig``
with rank K*r (the same number of adapter components as BADIT's K experts of rank r), the same
target modules, alpha and dropout. The LoRA baselines have no router, so they have slightly fewer
trainable parameters (K * in_features per layer fewer).
"""

from __future__ import annotations

from peft import LoraConfig, PeftConfig, TaskType

from badit.training.config import MethodConfig

MIXTURE_METHODS = ("badit", "svd-moe", "loramoe")
LORA_METHODS = {"lora": True, "pissa": "pissa", "olora": "olora"}
"""method name -> ``LoraConfig.init_lora_weights``."""


def build_peft_config(method: MethodConfig) -> PeftConfig:
    """The PEFT config that ``get_peft_model`` turns into the method's adapter."""
    if method.name in MIXTURE_METHODS:
        return _mixture_config(method)
    if method.name in LORA_METHODS:
        return _lora_config(method)
    raise ValueError(
        f"method.name {method.name!r} is unknown; use one of {', '.join([*MIXTURE_METHODS, *LORA_METHODS])}"
    )


def _mixture_config(method: MethodConfig):
    from badit.adapter import BaditConfig  # the adapter package registers the method with PEFT on import

    return BaditConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method.r,
        num_experts=method.num_experts,
        top_k=method.top_k,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=method.target_modules,
        init="random" if method.name == "loramoe" else "svd",
        svd_method=method.svd_method,
        router_scale=method.router_scale,
        regroup=method.name == "badit",
        regroup_every=method.regroup_every,
        regroup_until=method.regroup_until,
        regroup_ema=method.regroup_ema,
    )


def _lora_config(method: MethodConfig) -> LoraConfig:
    init = LORA_METHODS[method.name]
    if init == "pissa" and method.svd_method == "randomized":
        # PEFT's fast PiSSA: randomized SVD with 16 power iterations (PEFT's documented choice).
        init = "pissa_niter_16"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method.num_experts * method.r,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=method.target_modules,
        init_lora_weights=init,
    )


def uses_regrouping(method: MethodConfig) -> bool:
    return method.name == "badit"
