"""HydraLoRA (Tian et al., "HydraLoRA: An Asymmetric LoRA Architecture for Efficient Fine-Tuning",
NeurIPS 2024, arXiv 2404.19245) as a PEFT method: one shared A and N B heads per layer, mixed per
token by a router (the paper's Eq. 3-4).

    output = base(x) + scaling * sum_i w_i(x) B_i A dropout(x),    w(x) = softmax(R x)   (each token)

with A (r, in), B_i (out, r), R (N, in), scaling = lora_alpha / r. The heads are packed into one
B (out, N*r) (head i owns columns i*r:(i+1)*r), so the forward is two matmuls and an outer product,
with no loop over heads: the (N*r)-vector whose slice i is w_i * (A x) times B^T is sum_i w_i B_i A x.

Facts from the authors' public code (github.com/Clin0212/HydraLoRA, ``peft/tuners/lora.py`` and
``fine-tuning.sh``), where the paper is not precise: the router is a bias-free linear map of the
layer input x itself (the paper writes W_g in R^{r x N}, the code maps in_features -> N), applied to
every token and without dropout; dense softmax over all heads (no top-k); A Kaiming-uniform, every
B zero (the initial model is the pretrained one), router Kaiming-uniform. A zero router would keep
the heads identical forever (equal gradients, and no router gradient while they are equal), so the
random router init is part of the method, not a detail. The code's optional balance loss is off
(weight 0) in its own scripts and absent from the paper; it is not implemented.

Written here because PEFT has no HydraLoRA; registered with PEFT like BADIT (badit.adapter.registration),
so ``get_peft_model``, ``save_pretrained`` and ``PeftModel.from_pretrained`` work as for PEFT's methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from badit.adapter.peft_type import HYDRALORA_PREFIX, hydralora_peft_type
from badit.adapter.tuner import AdapterTuner


@dataclass
class HydraLoraConfig(PeftConfig):
    """Configuration of HydraLoRA. Defaults: the authors' ``fine-tuning.sh`` (r 4, alpha 32, dropout
    0.05, 4 B heads, MLP projections); the paper's tables use r 8 with 3 (single domain) or 10 heads.

    Args:
        r: rank of the shared A (and of every B head).
        num_heads: number of B heads N (the paper picks it by k-means over the data or by hand).
        lora_alpha: scaling numerator: scaling = lora_alpha / r.
        lora_dropout: dropout on the input of A (the router sees the input without dropout).
        target_modules: module names, a regex, or "all-linear"; only `torch.nn.Linear` layers.
    """

    r: int = field(default=4, metadata={"help": "Rank of the shared A and of each B head."})
    num_heads: int = field(default=4, metadata={"help": "Number of B heads N."})
    lora_alpha: float = field(default=32, metadata={"help": "Scaling numerator: scaling = lora_alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the input of A."})
    target_modules: list[str] | str | None = field(
        default_factory=lambda: ["gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Module names, a regex, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules trained and saved."}
    )
    task_type: str | None = field(default=None, metadata={"help": "PEFT task type, e.g. 'CAUSAL_LM'."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = hydralora_peft_type()
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = list(self.target_modules)
        for name in ("r", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"HydraLoraConfig.{name}={value!r} is not a positive integer; set it to 1 or more."
                )
        if not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(f"HydraLoraConfig.lora_alpha={self.lora_alpha!r} is not a positive number.")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"HydraLoraConfig.lora_dropout={self.lora_dropout!r} is not in [0, 1).")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


def hydra_output(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, router: torch.Tensor, scaling: float, x_dropped=None
) -> torch.Tensor:
    """scaling * sum_i softmax(router x)_i B_i A x for every token of ``x`` (..., in).

    ``a`` (r, in), ``b`` (out, N*r) with head i in columns i*r:(i+1)*r, ``router`` (N, in);
    ``x_dropped``: the input of A after dropout (default ``x``). Returns (..., out).
    """
    num_heads, rank = router.shape[0], a.shape[0]
    shared = (x if x_dropped is None else x_dropped) @ a.T  # (..., r)
    weights = torch.softmax(x @ router.T, dim=-1, dtype=torch.float32).to(shared.dtype)  # (..., N)
    mixed = (weights.unsqueeze(-1) * shared.unsqueeze(-2)).reshape(*shared.shape[:-1], num_heads * rank)
    return scaling * (mixed @ b.T)


class HydraLoraLayer(BaseTunerLayer):
    """PEFT bookkeeping shared by HydraLoRA layers (one entry per adapter name in every dict)."""

    adapter_layer_names = ("hydra_A", "hydra_B", "hydra_router")
    other_param_names = ("hydra_dropout", "r", "num_heads", "scaling")


class HydraLoraLinear(nn.Module, HydraLoraLayer):
    """An `nn.Linear` with HydraLoRA adapters: `hydra_A[n]` (r, in), `hydra_B[n]` (out, N*r) packing the N
    heads, `hydra_router[n]` (N, in). The base layer's weight is never changed."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: HydraLoraConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.hydra_A = nn.ParameterDict()
        self.hydra_B = nn.ParameterDict()
        self.hydra_router = nn.ParameterDict()
        self.hydra_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.num_heads: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.merged_adapters = []
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: HydraLoraConfig, inference_mode: bool = False) -> None:
        r, n = config.r, config.num_heads
        device = self.get_base_layer().weight.device
        self.r[adapter_name], self.num_heads[adapter_name] = r, n
        self.scaling[adapter_name] = config.scaling
        self.hydra_dropout[adapter_name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        )
        a = torch.empty(r, self.in_features, device=device)
        router = torch.empty(n, self.in_features, device=device)
        if not a.is_meta:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's (and LoRA's) init, as the public code
            nn.init.kaiming_uniform_(router, a=math.sqrt(5))
        self.hydra_A[adapter_name] = nn.Parameter(a)
        self.hydra_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, n * r, device=device))
        self.hydra_router[adapter_name] = nn.Parameter(router)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name not in self.hydra_A:
                continue
            a = self.hydra_A[name]
            inputs = x.to(a.dtype)
            delta = hydra_output(
                inputs,
                a,
                self.hydra_B[name],
                self.hydra_router[name],
                self.scaling[name],
                x_dropped=self.hydra_dropout[name](inputs),
            )
            result = result + delta.to(result.dtype)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(
            "Cannot merge a HydraLoRA adapter: its router mixes the B heads per token, so no single weight "
            "matrix reproduces it; use the adapter unmerged"
        )

    def unmerge(self) -> None:
        pass  # nothing is ever merged

    def __repr__(self) -> str:
        return "hydralora." + super().__repr__()


class HydraLoraModel(AdapterTuner):
    """HydraLoRA tuner; build it with `peft.get_peft_model(model, HydraLoraConfig(...))` after `import badit`."""

    prefix: str = HYDRALORA_PREFIX
    tuner_layer_cls = HydraLoraLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _is_own_layer(self, target: nn.Module) -> bool:
        return isinstance(target, HydraLoraLinear)

    def _new_layer(
        self, target: nn.Module, adapter_name: str, config: HydraLoraConfig, current_key: str
    ) -> nn.Module:
        if isinstance(target, BaseTunerLayer) or not isinstance(target, nn.Linear):
            raise TypeError(
                f"HydraLoRA cannot adapt module '{current_key}' of type {type(target).__name__}: only "
                "torch.nn.Linear layers are supported; remove it from target_modules"
            )
        return HydraLoraLinear(target, adapter_name, config)
