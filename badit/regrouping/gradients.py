"""Per-component gradient windows, filled by backward hooks on the adapter parameters.

Rank-1 component j of a BADIT layer is row j of A (K*r, in) with column j of B (out, K*r). Its
gradient signal is the row j of one (K*r, in + out) buffer holding [dL/dA_j, dL/dB_j], summed (or
averaged exponentially) over the backward passes since the last regroup: as many entries as the
adapter itself, and no per-expert copies of the gradients.

The hooks are `Tensor.register_hook` hooks on the parameters: they see the gradient of each backward
pass exactly once, before it is accumulated into `.grad`, so gradient accumulation does not count a
micro-batch twice (a hook reading `.grad` after every micro-batch would), and under
DistributedDataParallel they see the local gradient (ranks are combined when regrouping).
Non-finite gradients (a step that fp16 loss scaling will skip) are ignored; a constant loss scale
does not matter because only directions are used, but the hooks run before unscaling, so a scale that
changes within a regroup window weights the steps by it (docs/method.md, "fp16 and the regroup signal").
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # only a type: importing PEFT here would import badit.adapter (the registration
    # hook in badit/__init__.py), which imports this package again while it is half initialised
    from peft.config import PeftConfig

WINDOWS_ATTR = "_badit_gradient_windows"  # layer attribute: dict adapter name -> GradientWindow


class GradientWindow:
    """Gradient statistics of one adapter of one layer since the last regroup.

    badit_A (K*r, in) and badit_B (out, K*r) are the layer's packed factors. ema=None sums the
    gradients; a decay d in (0, 1) keeps buffer <- d * buffer + (1 - d) * grad at every backward pass
    (one update per micro-batch under gradient accumulation). d=0 is refused as `BaditConfig` refuses
    it: last_batch=True is the way to keep only the latest backward pass's gradient (the public code's
    signal, overwritten each time).
    """

    def __init__(
        self, badit_A: nn.Parameter, badit_B: nn.Parameter, ema: float | None = None, last_batch: bool = False
    ):
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError(f"regroup_ema must be None or a decay in (0, 1), got {ema!r}")
        if ema is not None and last_batch:
            raise ValueError("regroup_ema and last_batch exclude each other")
        self.badit_A, self.badit_B, self.ema, self.last_batch = badit_A, badit_B, ema, last_batch
        self.in_features = badit_A.shape[1]
        self.buffer: torch.Tensor | None = None  # (K*r, in + out) float32, allocated on first backward
        self.backward_passes = 0
        self._handles = [badit_A.register_hook(self._on_grad_A), badit_B.register_hook(self._on_grad_B)]

    def _buffer_like(self, grad: torch.Tensor) -> torch.Tensor:
        if self.buffer is None:
            rows = self.badit_A.shape[0]
            self.buffer = torch.zeros(rows, self.in_features + self.badit_B.shape[0], device=grad.device)
        elif self.buffer.device != grad.device:  # the model was moved after the window started
            self.buffer = self.buffer.to(grad.device)
        return self.buffer

    def _accumulate(self, target: torch.Tensor, grad: torch.Tensor) -> None:
        finite = torch.isfinite(grad).all()  # stays on the device: no synchronisation
        grad = grad.float()
        with torch.no_grad():
            if self.last_batch:  # a skipped (non-finite) step keeps the previous batch's gradient
                target.copy_(torch.where(finite, grad, target))
            elif self.ema is None:
                target.add_(torch.where(finite, grad, 0.0))
            else:
                target.lerp_(torch.where(finite, grad, target), 1.0 - self.ema)

    def _on_grad_A(self, grad: torch.Tensor) -> None:
        self.backward_passes += 1
        self._accumulate(self._buffer_like(grad)[:, : self.in_features], grad)

    def _on_grad_B(self, grad: torch.Tensor) -> None:
        self._accumulate(self._buffer_like(grad)[:, self.in_features :], grad.T)

    def statistics(self) -> torch.Tensor:
        """The (K*r, in + out) buffer, zeros if no gradient arrived yet."""
        if self.buffer is None:
            rows = self.badit_A.shape[0]
            return torch.zeros(rows, self.in_features + self.badit_B.shape[0], device=self.badit_A.device)
        return self.buffer

    def permute_(self, perm: torch.Tensor) -> None:
        """Reorder the components like the adapter: new row j = old row perm[j]."""
        if self.buffer is not None:
            self.buffer.copy_(self.buffer.index_select(0, perm.to(self.buffer.device)))

    def reset(self) -> None:
        """Start a new window (called after each regroup)."""
        if self.buffer is not None:
            self.buffer.zero_()
        self.backward_passes = 0

    def remove(self) -> None:
        """Remove the hooks; the window stops receiving gradients."""
        for handle in self._handles:
            handle.remove()

    def __deepcopy__(self, memo: dict) -> GradientWindow:
        # Parameter.__deepcopy__ drops tensor hooks: re-register them on the copied parameters.
        clone = GradientWindow(
            copy.deepcopy(self.badit_A, memo), copy.deepcopy(self.badit_B, memo), self.ema, self.last_batch
        )
        clone.buffer = None if self.buffer is None else self.buffer.clone()
        clone.backward_passes = self.backward_passes
        return clone


def is_badit_layer(module: nn.Module) -> bool:
    """Whether `module` is a BADIT layer: the one test used across badit.

    A layer is recognised by its packed factors (badit_A / badit_B), not by class, so that this
    package stays below `badit.adapter` (whose model attaches gradient tracking when built).
    """
    return hasattr(module, "badit_A") and hasattr(module, "badit_B")


def iter_badit_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every BADIT layer of `model` (see `is_badit_layer`)."""
    for name, module in model.named_modules():
        if is_badit_layer(module):
            yield name, module


def layer_key(layer_name: str, adapter_name: str) -> str:
    """The one key of an adapter of a layer (statistics, saved gradient windows): the layer name, with
    ``.<adapter>`` appended unless the adapter is PEFT's "default" (as `badit.get_routing_weights`)."""
    return layer_name if adapter_name == "default" else f"{layer_name}.{adapter_name}"


def find_adapter_config(model: nn.Module, adapter_name: str) -> PeftConfig | None:
    """The adapter's `BaditConfig` (typed as PEFT's base class: this package sits below `badit.adapter`), found on the PEFT model or tuner inside `model` (None if absent)."""
    for module in model.modules():
        configs = getattr(module, "peft_config", None)
        if isinstance(configs, dict) and adapter_name in configs:
            return configs[adapter_name]
    return None


def attach_gradient_tracking(model: nn.Module, ema: float | None = None) -> int:
    """Install gradient windows on every BADIT layer and adapter of `model`; returns how many are tracked.

    ema: EMA decay for every adapter; None takes each adapter's `BaditConfig.regroup_ema` (None there
    means a plain sum since the last regroup). Adapters whose config says regroup=False are skipped,
    and so are frozen ones (a hook needs a parameter that requires grad): call it again after making
    an adapter trainable. Idempotent: adapters already tracked keep their window.
    """
    configs: dict[str, PeftConfig | None] = {}
    tracked = 0
    for _, layer in iter_badit_layers(model):
        windows = layer.__dict__.setdefault(WINDOWS_ATTR, {})
        for adapter_name, badit_A in layer.badit_A.items():
            if adapter_name not in configs:
                configs[adapter_name] = find_adapter_config(model, adapter_name)
            config, badit_B = configs[adapter_name], layer.badit_B[adapter_name]
            if config is not None and not config.regroup:
                continue  # regrouping is off for this adapter
            if not (badit_A.requires_grad and badit_B.requires_grad):
                continue  # frozen (e.g. loaded for inference): nothing to track, no hook possible
            if adapter_name not in windows:
                last = config is not None and config.regroup_signal == "last_batch"
                decay = ema if ema is not None or config is None else config.regroup_ema
                windows[adapter_name] = GradientWindow(badit_A, badit_B, None if last else decay, last)
            tracked += 1
    return tracked


def detach_gradient_tracking(model: nn.Module) -> None:
    """Remove every gradient window and its hooks from `model`."""
    for _, layer in iter_badit_layers(model):
        for window in layer.__dict__.pop(WINDOWS_ATTR, {}).values():
            window.remove()


def gradient_windows(layer: nn.Module) -> dict[str, GradientWindow]:
    """The windows installed on a layer (empty if tracking was never attached)."""
    return layer.__dict__.get(WINDOWS_ATTR, {})


@contextmanager
def gradient_tracking_paused(model: nn.Module) -> Iterator[None]:
    """Within this context, backward passes leave the regroup gradient windows as they were.

    For measurements that compute gradients without training (e.g. `badit.analysis.gradient_conflict`):
    the windows are restored on exit, so the next regroup only sees training gradients.
    """
    windows = [w for _, layer in iter_badit_layers(model) for w in gradient_windows(layer).values()]
    saved = [(None if w.buffer is None else w.buffer.clone(), w.backward_passes) for w in windows]
    try:
        yield
    finally:
        for window, (buffer, passes) in zip(windows, saved, strict=True):
            window.buffer, window.backward_passes = buffer, passes
