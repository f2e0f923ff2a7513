"""`BaditLinear`: an nn.Linear with K low-rank experts mixed per sequence by a router."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

from badit.adapter.config import BaditConfig
from badit.adapter.quantized import dequantized_weight, quantization_kind, store_quantized
from badit.adapter.routing import (
    RoutingState,
    batch_sums,
    gate_delta_coefficients,
    masked_mean,
    mixing_weights,
    standardize,
    task_mixing_weights,
    update_moments,
)
from badit.adapter.svd import expert_factors, top_singular_triplets


def same_components(
    current: tuple[torch.Tensor, torch.Tensor], loaded: tuple[torch.Tensor, torch.Tensor]
) -> bool:
    """Whether two (A0 (K*r, in), B0 (out, K*r)) pairs hold exactly the same rank-1 components, in any order.

    Component j is row j of A0 with column j of B0; a regroup permutes them. Rows of [A0 | B0.T] are
    compared after `torch.unique`'s lexicographic sort, so the test is exact (no tolerance) and costs one
    sort of K*r rows.
    """
    rows = [torch.cat([a.float(), b.float().T.to(a.device)], dim=1) for a, b in (current, loaded)]
    rows[1] = rows[1].to(rows[0].device)
    if rows[0].shape != rows[1].shape:
        return False
    unique = [torch.unique(r, dim=0) for r in rows]
    return unique[0].shape[0] == rows[0].shape[0] and torch.equal(unique[0], unique[1])


def is_adaptable(module: nn.Module) -> bool:
    """Whether BADIT can wrap ``module``: an ``nn.Linear`` (also bitsandbytes' 4/8-bit ones) or
    transformers' ``Conv1D`` (GPT-2's projections, weight stored (in, out))."""
    return isinstance(module, (nn.Linear, Conv1D))


def _is_plain_tensor(value: Any) -> bool:
    """A materialised, unsharded tensor (not a live Parameter from keep_vars, a DTensor shard or meta)."""
    return type(value) is torch.Tensor and not value.is_meta


def _pretrained_weight_in_state_dict(
    layer: BaditLinear, state_dict: dict, prefix: str, metadata: Any
) -> None:
    """state_dict post-hook of `BaditLinear`: in a state dict of the wrapped model (keys named as in the
    original model, what PEFT's `get_base_model_state_dict` reads), `base_layer.weight` is the weight the
    plain model has (`BaditLinear.plain_weight`), not the stored residual.

    A state dict of the PeftModel (checkpoints, FSDP / DeepSpeed) keeps the stored residual, at no cost;
    `_load_from_state_dict` reads each kind back the way it was written. Which kind it is follows from the
    key prefix: rooted at the wrapped model, the layer's prefix is its own name in that model.
    """
    key = f"{prefix}base_layer.weight"
    if prefix != f"{layer.layer_name}." or layer.quantization is not None:
        return
    if not _is_plain_tensor(state_dict.get(key)):
        return
    weight = layer.plain_weight()
    stored = state_dict[key]
    state_dict[key] = (weight.T if layer.fan_in_fan_out else weight).to(stored.dtype).contiguous()


@dataclass
class AdapterState:
    """What a BADIT layer keeps per adapter besides its tensors (badit_A, badit_B, badit_A0, badit_B0, the
    router and the dropout, which PEFT's containers hold).

    The residual invariant: the base layer's weight is always the pretrained weight minus, for every
    adapter, `BaditLinear._taken_out`: its initial components s * B0 @ A0 while `removed` is True, less
    its merged delta while `merged_routing` is set. Every change of the base weight goes through
    `BaditLinear._keeping_residual`, which applies exactly the change of `_taken_out`.
    """

    r: int
    num_experts: int
    top_k: int | None
    scaling: float
    router_scale: float
    """Multiplies the softmax: K with router_scale="preserve" (each expert starts at weight 1), else 1."""
    train_router: bool = True
    gate_delta: bool = False
    """Whether the mixing weights scale only the learned change B A - B0 A0 (gate="delta")."""
    route_by_task: bool = False
    """Whether the mixture is looked up by task id (routing="task", `badit_task_logits`)."""
    standardize_input: bool = False
    """Whether the router sees its pooled input standardised by running moments (`badit_router_moments`)."""
    removed: bool = False
    """Whether s * B0 @ A0 is out of the base weight: False while the factors are still to be loaded
    (created on the meta device, PEFT's low_cpu_mem_usage) and after unload / delete gave them back."""
    routing_weights: torch.Tensor | None = None
    """The last forward's mixing weights (batch, K), detached."""
    merged_routing: torch.Tensor | None = None
    """The routing folded into the base weight while the adapter is merged."""


class BaditLayer(BaseTunerLayer):
    """PEFT bookkeeping shared by BADIT layers (one entry per adapter name in each container)."""

    adapter_layer_names = ("badit_A", "badit_B", "badit_router", "badit_task_logits")
    other_param_names = (
        "badit_A0",
        "badit_B0",
        "badit_router_moments",
        "badit_fixed_routing",
        "badit_dropout",
        "badit_state",
    )


class BaditLinear(nn.Module, BaditLayer):
    """BADIT adapter around an `nn.Linear`.

    Per adapter name n: `badit_A[n]` (K*r, in) and `badit_B[n]` (out, K*r) pack the K experts (expert e owns
    rows / columns e*r:(e+1)*r), `badit_router[n]` maps the mean of the prompt tokens' inputs to K logits,
    `badit_A0[n]` / `badit_B0[n]` keep the initial factors, `badit_state[n]` the rest (`AdapterState`:
    sizes, scaling, routing, whether its components are out of the base weight). The wrapped base layer
    holds the residual
    W - sum over adapters n of scaling_n * B0_n @ A0_n, so with one adapter

        output = base(x) + scaling * ((dropout(x) @ A.T) * gate.repeat_interleave(r)) @ B.T

    with gate (batch, K) one weight vector per sequence. A disabled or inactive adapter contributes its
    initial components instead (scaling * B0 @ A0), which gives back the pretrained layer; so each adapter
    computes what it computes alone, whatever other adapters the layer holds. (PEFT's PiSSA instead takes
    its components out of whatever the base weight is when the adapter is added, which makes a second
    adapter depend on the first; BADIT always decomposes the pretrained weight.)

    Mixed batches (`adapter_names`, one name per sequence, "__base__" for the pretrained layer) arrive
    through `routing_state.adapter_names`; see `_mixed_batch_forward`.
    """

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: BaditConfig, layer_name: str
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.layer_name = layer_name
        self.badit_A = nn.ParameterDict()
        self.badit_B = nn.ParameterDict()
        self.badit_router = nn.ModuleDict()
        self.badit_task_logits = nn.ParameterDict()  # routing="task": (num_tasks, K) per adapter
        self.badit_A0 = BufferDict(persistent=True)
        self.badit_B0 = BufferDict(persistent=True)
        self.badit_router_moments = BufferDict(persistent=True)  # router_input="standardized": (3, in)
        # set_fixed_routing: (K,) per adapter while a routing is fixed; a buffer, so save_pretrained keeps it
        self.badit_fixed_routing = BufferDict(persistent=True)
        self.badit_dropout = nn.ModuleDict()
        self.badit_state: dict[str, AdapterState] = {}
        self.merged_adapters = []
        self.routing_state: RoutingState | None = None
        self.quantization: str | None = None  # "4bit" / "8bit" for a bitsandbytes base (quantized.py)

        base = self.get_base_layer()
        self.quantization = quantization_kind(base)
        if not is_adaptable(base):
            raise TypeError(
                f"BADIT cannot adapt module '{layer_name}' of type {type(base).__name__}: only torch.nn.Linear "
                "and transformers' Conv1D (GPT-2) layers are supported; remove it from target_modules."
            )
        # GPT-2's Conv1D stores its weight as (in, out) (PEFT LoRA's `fan_in_fan_out`); every weight read
        # and write goes through `_base_weight` / `_set_residual`, which see it as (out, in).
        self.fan_in_fan_out = isinstance(base, Conv1D)
        if self.fan_in_fan_out:
            self.in_features, self.out_features = base.weight.shape
        else:
            self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)
        self.register_state_dict_post_hook(_pretrained_weight_in_state_dict)

    # ------------------------------------------------------------------ creation and the residual

    def update_layer(self, adapter_name: str, config: BaditConfig, inference_mode: bool = False) -> None:
        """Add adapter `adapter_name`: experts from the SVD of the pretrained weight (or random), router at 0."""
        k, r = config.num_experts, config.r
        rank = k * r
        if rank > min(self.in_features, self.out_features):
            raise ValueError(
                f"BADIT layer '{self.layer_name}' ({self.out_features}x{self.in_features}) cannot hold "
                f"num_experts * r = {k} * {r} = {rank} components: at most min(in, out) = "
                f"{min(self.in_features, self.out_features)}. Lower r or num_experts, or exclude this module."
            )
        state = AdapterState(
            r=r,
            num_experts=k,
            top_k=config.top_k,
            scaling=config.scaling,
            router_scale=float(k) if config.router_scale == "preserve" else 1.0,
            train_router=config.train_router,
            gate_delta=config.gate == "delta",
            route_by_task=config.routing == "task",
            standardize_input=config.router_input == "standardized",
        )
        self.badit_state[adapter_name] = state
        self.badit_dropout[adapter_name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        )

        weight = self.get_base_layer().weight
        device = weight.device
        self.badit_A[adapter_name] = nn.Parameter(torch.zeros(rank, self.in_features, device=device))
        self.badit_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        self.badit_router[adapter_name] = nn.Linear(self.in_features, k, bias=False, device=device)
        if state.standardize_input:  # mean, mean of squares, count: none seen yet
            self.badit_router_moments[adapter_name] = torch.zeros(3, self.in_features, device=device)
        if state.route_by_task:  # zero logits: every task starts at the uniform mixture
            self.badit_task_logits[adapter_name] = nn.Parameter(
                torch.zeros(config.num_tasks, k, device=device)
            )
        if self.badit_A[adapter_name].is_meta:  # PEFT's low_cpu_mem_usage: values come from a checkpoint
            # Real (small) placeholders: PEFT moves buffer-only modules with .to(), which meta tensors refuse.
            self.badit_A0[adapter_name] = torch.zeros(rank, self.in_features, device=device)
            self.badit_B0[adapter_name] = torch.zeros(self.out_features, rank, device=device)
        else:
            pretrained = self.pretrained_weight()  # before this adapter's factors exist
            a, b = self._initial_factors(pretrained, config, rank)
            with torch.no_grad():
                self.badit_A[adapter_name].copy_(a)
                self.badit_B[adapter_name].copy_(b)
                if config.router_init == "zero":  # else: nn.Linear's own init (the public code's)
                    nn.init.zeros_(self.badit_router[adapter_name].weight)
            self.badit_A0[adapter_name] = a.detach().clone()
            self.badit_B0[adapter_name] = b.detach().clone()
            # Only this adapter's initial components leave the base weight, so the earlier adapters (and
            # disable_adapter) stay exact.
            with self._keeping_residual(adapter_name):
                state.removed = True
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def cast_adapter(self, adapter_name: str) -> None:
        """Store adapter `adapter_name`'s tensors in the base weight's dtype (PEFT's
        `autocast_adapter_dtype=False`; by default BADIT keeps them in float32, as PEFT's autocast does).
        The router's running moments stay float32: they are averages over thousands of sequences."""
        dtype = self.get_base_layer().weight.dtype
        if not dtype.is_floating_point or adapter_name not in self.badit_state:
            return  # a quantised base: the factors stay float32
        with self._keeping_residual(adapter_name), torch.no_grad():
            for container in (self.badit_A, self.badit_B, self.badit_task_logits):
                if adapter_name in container:
                    old = container[adapter_name]
                    container[adapter_name] = nn.Parameter(old.to(dtype), requires_grad=old.requires_grad)
            for container in (self.badit_A0, self.badit_B0):
                container[adapter_name] = container[adapter_name].to(dtype)
            self.badit_router[adapter_name].to(dtype)

    def set_adapter(self, adapter_names, inference_mode: bool = False) -> None:
        """PEFT's ``set_adapter``, then the routers of ``train_router=False`` adapters stay frozen."""
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        for name, state in self.badit_state.items():
            if not state.train_router and name in self.badit_router:
                self.badit_router[name].requires_grad_(False)

    def _initial_factors(
        self, pretrained: torch.Tensor, config: BaditConfig, rank: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 A (rank, in), B (out, rank) for a new adapter on the pretrained weight (out, in)."""
        device = self.get_base_layer().weight.device
        if config.init == "random":  # LoRAMoE-style baseline: LoRA's init, zero B
            a = torch.empty(rank, self.in_features, device=device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            return a, torch.zeros(self.out_features, rank, device=device)
        u, s, vh = top_singular_triplets(
            pretrained, rank, config.svd_method, config.svd_oversample, config.svd_niter
        )
        a, b = expert_factors(u, s, vh, config.scaling)
        return a.float(), b.float()

    def _initial_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """scaling * B0 @ A0 in float32: what the residual lacks for this adapter."""
        return self.badit_state[adapter_name].scaling * (
            self.badit_B0[adapter_name].float() @ self.badit_A0[adapter_name].float()
        )

    def _taken_out(self, name: str) -> torch.Tensor | float:
        """What adapter `name` has taken out of the pretrained weight (float32 (out, in), or 0.0): its initial
        components while `removed`, less its delta while merged. The base weight is the pretrained weight
        minus every adapter's `_taken_out` (see `AdapterState`)."""
        state = self.badit_state[name]
        taken = self._initial_delta_weight(name) if state.removed else 0.0
        if state.merged_routing is not None:
            taken = taken - self._delta_weight(name, state.merged_routing)
        return taken

    @contextmanager
    def _keeping_residual(self, name: str) -> Iterator[None]:
        """Around a change of adapter `name`'s state or initial factors: the base weight changes by what
        `_taken_out(name)` changes, so the residual invariant holds after it. The one writer of the residual."""
        before = self._taken_out(name)
        yield
        after = self._taken_out(name)
        if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
            self._set_residual(self._base_weight() + before - after)

    def _removed_components(self) -> torch.Tensor | float:
        """float32 (out, in): the initial components of every adapter whose components are out of the
        base weight (0.0 when none is)."""
        total: torch.Tensor | float = 0.0
        for name, state in self.badit_state.items():
            if state.removed:
                total = total + self._initial_delta_weight(name)
        return total

    def plain_weight(self) -> torch.Tensor:
        """The weight the plain model has (float32 (out, in)): the pretrained weight plus the merged
        adapters' deltas, what `merge_and_unload()` would leave. The residual plus every adapter's
        initial components that are out of it."""
        return self._base_weight() + self._removed_components()

    def pretrained_weight(self) -> torch.Tensor:
        """The original weight (float32): the residual plus what every adapter took out of it."""
        weight = self._base_weight()
        for name in self.badit_state:
            weight = weight + self._taken_out(name)
        return weight

    def _base_weight(self) -> torch.Tensor:
        """The base layer's weight (the residual) as float32 (out, in); dequantised for a bitsandbytes base."""
        weight = dequantized_weight(self.get_base_layer())
        return weight.T if self.fan_in_fan_out else weight

    def _set_residual(self, weight: torch.Tensor) -> None:
        """Store ``weight`` (out, in) as the base layer's weight, in its dtype and orientation."""
        if self.quantization is not None:  # stored quantised again, as PiSSA does for QLoRA
            store_quantized(self.get_base_layer(), weight)
            return
        base_weight = self.get_base_layer().weight
        with torch.no_grad():
            base_weight.copy_((weight.T if self.fan_in_fan_out else weight).to(base_weight.dtype))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Rebuild the residual for loaded initial factors: W = residual + s*B0 @ A0 stays what it was.

        A checkpoint's A0 / B0 (e.g. from another run of the randomized SVD) differ from the ones this layer
        was created with, so the base weight becomes W - s * B0_loaded @ A0_loaded before they are copied in.
        """
        for name, state in self.badit_state.items():
            a0, b0 = state_dict.get(f"{prefix}badit_A0.{name}"), state_dict.get(f"{prefix}badit_B0.{name}")
            if a0 is None or b0 is None:
                continue  # nothing to rebuild; PyTorch reports missing keys itself
            if a0.shape != self.badit_A0[name].shape or b0.shape != self.badit_B0[name].shape:
                continue  # PyTorch reports the size mismatch itself
            if state.removed and same_components((self.badit_A0[name], self.badit_B0[name]), (a0, b0)):
                continue  # e.g. resuming after a regroup: the residual is already exact, keep it
            with self._keeping_residual(name), torch.no_grad():  # the loaded components leave the base weight
                self.badit_A0[name].copy_(a0)
                self.badit_B0[name].copy_(b0)
                state.removed = True
        for name in self.badit_state:  # a fixed routing saved with the adapter: its buffer, to be loaded
            value = state_dict.get(f"{prefix}badit_fixed_routing.{name}")
            if _is_plain_tensor(value) and name not in self.badit_fixed_routing:
                self.badit_fixed_routing[name] = torch.zeros_like(value, device=self.badit_A[name].device)
        self._plain_weight_to_residual(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _plain_weight_to_residual(self, state_dict: dict, prefix: str) -> None:
        """The reverse of `_pretrained_weight_in_state_dict`: a state dict of the wrapped model carries the
        plain weight, which becomes the residual (less the initial components of every adapter that took
        them out, with the factors just loaded) before the base layer copies it in. `load_state_dict`
        works on its own copy of the dict, so the caller's is left alone."""
        key = f"{prefix}base_layer.weight"
        value = state_dict.get(key)
        base = self.get_base_layer().weight
        if prefix != f"{self.layer_name}." or self.quantization is not None or not _is_plain_tensor(value):
            return
        if value.shape != base.shape:
            return  # PyTorch reports the size mismatch itself
        plain = value.to(device=base.device, dtype=torch.float32)
        plain = plain.T if self.fan_in_fan_out else plain
        residual = plain - self._removed_components()
        state_dict[key] = (residual.T if self.fan_in_fan_out else residual).to(value.dtype).contiguous()

    def _move_adapter_to_device_of_base_layer(
        self, adapter_name: str, device: torch.device | None = None
    ) -> None:
        """Move adapter `adapter_name` to the base layer's device; BADIT keeps its factors in float32."""
        device = device if device is not None else self.get_base_layer().weight.device
        containers = (self.badit_A, self.badit_B, self.badit_A0, self.badit_B0, self.badit_task_logits)
        for container in (*containers, self.badit_router_moments, self.badit_fixed_routing):
            if adapter_name in container and not container[adapter_name].is_meta:
                container[adapter_name].data = container[adapter_name].data.to(device)
        for container in (self.badit_router, self.badit_dropout):
            if adapter_name in container:
                module = container[adapter_name]
                if not any(p.is_meta for p in module.parameters()):
                    module.to(device)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        mixed = self.routing_state.adapter_names if self.routing_state is not None else None
        if mixed is not None and not self.disable_adapters:
            return self._mixed_batch_forward(x, mixed, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.badit_A:
            if name in self.merged_adapters:
                continue
            if not self.badit_state[name].removed:
                raise RuntimeError(
                    f"BADIT adapter '{name}' of layer '{self.layer_name}' was created on the meta device and "
                    "its weights were never loaded"
                )
            if self.disable_adapters or name not in self.active_adapters:
                result = result + self._initial_output(name, x).to(result.dtype)
            else:
                result = result + self._adapter_output(name, x).to(result.dtype)
        return result

    def _mixed_batch_forward(
        self, x: torch.Tensor, adapter_names: list[str], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Each sequence of x (batch, seq, in), or row of x (batch, in), through its own adapter
        (`adapter_names[i]`, or "__base__").

        The same contract as PEFT LoRA's mixed batches: the pretrained output for every row (residual plus
        every adapter's initial components), then, for the rows of adapter n, n's output minus its initial
        components. One pass per adapter present in the batch, on its rows only (inference only).
        """
        if x.dim() not in (2, 3) or len(adapter_names) != x.shape[0]:  # PEFT LoRA's messages from here on
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(adapter_names)} and {len(x) if x.dim() else 0} respectively."
            )
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
            )
        result = self.base_layer(x, *args, **kwargs)
        for name in self.badit_A:
            result = result + self._initial_output(name, x).to(result.dtype)
        for name in sorted(set(adapter_names) & set(self.badit_A)):
            rows = torch.tensor([i for i, n in enumerate(adapter_names) if n == name], device=x.device)
            sub = x.index_select(0, rows)
            change = self._adapter_output(name, sub, rows) - self._initial_output(name, sub)
            result = result.index_add(0, rows, change.to(result.dtype))
        return result

    def _initial_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """scaling * x @ A0.T @ B0.T: the pretrained components this adapter took out of the base weight."""
        a0, b0 = self.badit_A0[name], self.badit_B0[name]
        return (
            F.linear(F.linear(self._cast_input_dtype(x, a0.dtype), a0), b0) * self.badit_state[name].scaling
        )

    def _adapter_output(self, name: str, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Adapter `name`'s output on x; `rows` (mixed batches): which sequences of the full batch x holds."""
        a, b, state = self.badit_A[name], self.badit_B[name], self.badit_state[name]
        x = self._cast_input_dtype(x, a.dtype)
        if x.dim() == 3:  # (batch, seq, in): language models
            sequences = x
        elif x.dim() == 2:  # (batch, in): plain modules; each row is its own sequence
            sequences = x[:, None, :]
        else:
            sequences = x.reshape(1, -1, x.shape[-1])
        gate = self._gate(name, sequences, rows, use_prompt_mask=x.dim() == 3)  # (batch, K)
        component_gate = self._per_component(gate, state, x.dim())
        dropped = self.badit_dropout[name](x)
        if not state.gate_delta:
            return F.linear(F.linear(dropped, a) * component_gate, b)
        return self._gated_delta_output(name, x, dropped, component_gate)

    def _gated_delta_output(
        self, name: str, x: torch.Tensor, dropped: torch.Tensor, component_gate: torch.Tensor
    ) -> torch.Tensor:
        """gate="delta": s * (B (g A d) + B0 ((1 - g) A0 x)), d = dropout(x), computed without cancellation.

        Written as s * (B0 u0 + B (g (u1 + ud - u0)) + (B - B0) (g u0)) with u0 = A0 x, ud = A0 d and
        u1 = (A - A0) d: the learned change enters through A - A0 and B - B0 themselves, never as the
        difference of two nearly equal products (B A x - B0 A0 x, whose rounding is as large as the change
        early in training; Adam turns that noise in the router's gradient into full-size steps). Without
        dropout (d = x) ud is u0 and the gated term is exactly B (g u1) + (B - B0) (g u0).
        """
        a, b, a0, b0 = self.badit_A[name], self.badit_B[name], self.badit_A0[name], self.badit_B0[name]
        scaling = self.badit_state[name].scaling
        initial = F.linear(x.to(a0.dtype), a0)  # u0
        learned = F.linear(dropped, a - a0)  # u1
        if dropped is not x:  # + (ud - u0): what dropout changed in the initial components' input
            learned = learned + F.linear(dropped, a0) - initial
        output = F.linear(initial * scaling, b0) + F.linear(learned * component_gate, b)
        return output + F.linear(initial * component_gate, b - b0)

    @staticmethod
    def _per_component(weights: torch.Tensor, state: AdapterState, dims: int) -> torch.Tensor:
        """(batch, K) expert weights as one multiplier per rank-1 component with the scaling folded in,
        shaped to broadcast over an input of `dims` dimensions: (batch, 1, K*r), (batch, K*r) or (K*r,)."""
        component = (weights * state.scaling).repeat_interleave(state.r, dim=-1)
        if dims == 3:
            return component[:, None, :]
        return component if dims == 2 else component.reshape(-1)

    def _gate(
        self,
        name: str,
        sequences: torch.Tensor,
        rows: torch.Tensor | None = None,
        use_prompt_mask: bool = True,
    ) -> torch.Tensor:
        """Mixing weights (batch, K) of adapter `name` for sequences (batch, seq, in); stored in routing_weights.

        `rows`: the sequences' indices in the model's batch when they are a subset (mixed batches).
        `use_prompt_mask`: False for inputs that are not (batch, seq, in) token sequences; they pool all rows.
        """
        batch, state = sequences.shape[0], self.badit_state[name]
        if name in self.badit_fixed_routing:
            gate = self.badit_fixed_routing[name].to(sequences).expand(batch, -1)
        elif state.route_by_task:
            if self.routing_state is None:
                raise RuntimeError(
                    f"BADIT layer '{self.layer_name}': routing='task' needs the model's routing state"
                )
            task_ids = self.routing_state.batch_task_ids(batch, rows)
            gate = task_mixing_weights(
                self.badit_task_logits[name], task_ids, state.top_k, state.router_scale
            )
        elif self.routing_state is not None and self.routing_state.reuse:
            gate = state.routing_weights
            if gate is None or gate.shape[0] != batch:
                raise RuntimeError(
                    f"BADIT layer '{self.layer_name}': a cached decoding step arrived without the prefill's "
                    "routing for this batch; run the prefill through the BADIT model first"
                )
            return gate.to(sequences)
        else:
            mask = self.routing_state.prompt_mask if self.routing_state is not None else None
            mask = mask if use_prompt_mask else None
            if mask is not None and rows is not None:
                mask = mask.index_select(0, rows)
            if mask is not None and mask.shape != sequences.shape[:2]:
                raise RuntimeError(
                    f"BADIT layer '{self.layer_name}' got input of shape {tuple(sequences.shape)} but the prompt "
                    f"mask has shape {tuple(mask.shape)}"
                )
            router = self.badit_router[name]
            pooled = masked_mean(sequences, mask)
            if state.standardize_input:
                pooled = self._standardized(name, pooled)
            gate = mixing_weights(router(pooled.to(router.weight.dtype)), state.top_k, state.router_scale)
        state.routing_weights = gate.detach()
        return gate

    def _standardized(self, name: str, pooled: torch.Tensor) -> torch.Tensor:
        """The pooled router input standardised by the adapter's running moments, which a training forward
        first updates with this batch (`badit.adapter.routing.update_moments`; no gradient flows into them)."""
        moments = self.badit_router_moments[name]
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                sums = batch_sums(pooled, moments.dtype)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    # every data-parallel process updates with the global batch (as SyncBatchNorm does)
                    torch.distributed.all_reduce(sums)
                moments.copy_(update_moments(moments, sums))
        return standardize(pooled, moments)

    # ------------------------------------------------------------------ merging

    def set_fixed_routing(self, adapter_name: str, weights: torch.Tensor | None) -> None:
        """Use the mixing weights `weights` (K,) for every input, or the router again when None. Kept in
        the buffer `badit_fixed_routing`, so `save_pretrained` saves it and loading restores it."""
        state = self.badit_state[adapter_name]
        if weights is None:
            if adapter_name in self.badit_fixed_routing:
                del self.badit_fixed_routing[adapter_name]
            return
        weights = torch.as_tensor(weights, dtype=torch.float32, device=self.badit_A[adapter_name].device)
        if weights.shape != (state.num_experts,):
            raise ValueError(
                f"fixed routing for layer '{self.layer_name}' must have shape ({state.num_experts},) "
                f"(one mixing weight per expert), got {tuple(weights.shape)}"
            )
        if not bool(torch.isfinite(weights).all()):
            raise ValueError(f"fixed routing for layer '{self.layer_name}' has non-finite mixing weights")
        self.badit_fixed_routing[adapter_name] = weights.detach().clone()

    def fixed_routing(self, adapter_name: str) -> torch.Tensor | None:
        """The fixed mixing weights (K,) of adapter `adapter_name`, or None while its router routes."""
        return self.badit_fixed_routing[adapter_name] if adapter_name in self.badit_fixed_routing else None

    def _delta_weight(self, name: str, routing: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to the residual under a fixed `routing` (K,), float32 (out, in):
        scaling * B diag(g) A, plus scaling * B0 diag(1 - g) A0 with gate="delta"."""
        state = self.badit_state[name]
        component_gate = (routing.float() * state.scaling).repeat_interleave(state.r)
        delta = self.badit_B[name].float() @ (component_gate[:, None] * self.badit_A[name].float())
        if state.gate_delta:
            rest = (gate_delta_coefficients(routing.float()) * state.scaling).repeat_interleave(state.r)
            delta = delta + self.badit_B0[name].float() @ (rest[:, None] * self.badit_A0[name].float())
        return delta

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold adapters into the base weight; only possible with a fixed routing (see `set_fixed_routing`)."""
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.badit_A:
                continue
            state = self.badit_state[name]
            if name not in self.badit_fixed_routing:
                raise ValueError(
                    f"Cannot merge BADIT adapter '{name}' of layer '{self.layer_name}': its expert mixing weights "
                    "depend on each input sequence (the router), so no single weight matrix reproduces it. Fix "
                    "a routing vector first with model.set_fixed_routing(weights) (e.g. the mean of "
                    "badit.get_routing_weights(model) over a task), then merge."
                )
            routing = self.badit_fixed_routing[name].clone()
            if (
                safe_merge
                and not torch.isfinite(self._base_weight() + self._delta_weight(name, routing)).all()
            ):
                raise ValueError(
                    f"merging BADIT adapter '{name}' into '{self.layer_name}' gives non-finite weights"
                )
            with self._keeping_residual(name):
                state.merged_routing = routing
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Take merged adapters back out of the base weight."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with self._keeping_residual(name):
                self.badit_state[name].merged_routing = None

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.Module:
        """The plain nn.Linear: the pretrained weight, plus the merged adapters when `merge` is True.

        Called by PEFT's `merge_and_unload()` / `unload()`. Adapters not merged give back their initial
        components, so `unload()` returns the pretrained layer.
        """
        if merge:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        for name, state in self.badit_state.items():
            if name not in self.merged_adapters:
                with self._keeping_residual(name):
                    state.removed = False  # its initial components go back into the weight
        self.merged_adapters = []
        return self.get_base_layer()

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter, giving its initial components (and a merged delta) back to the base weight."""
        if adapter_name in self.badit_state:
            with self._keeping_residual(adapter_name):
                self.badit_state[adapter_name].removed = False
                self.badit_state[adapter_name].merged_routing = None
        if adapter_name in self.merged_adapters:
            self.merged_adapters.remove(adapter_name)
        super().delete_adapter(adapter_name)

    def __repr__(self) -> str:
        return "badit." + super().__repr__()
