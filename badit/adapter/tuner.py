"""What BADIT's and HydraLoRA's PEFT tuners share: PEFT's create-and-replace step for a layer that wraps
one module.

PEFT's `BaseTuner.inject_adapter` calls `_create_and_replace` once per targeted module. Both tuners do
there what PEFT's own LoRA tuner does: a module already wrapped by the tuner's layer gets the new adapter
added; any other module is wrapped by a new layer (or refused with a TypeError that names it), which is
frozen unless its adapter is active, and put in the module's place.
"""

from __future__ import annotations

from typing import Any

from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from torch import nn


class AdapterTuner(BaseTuner):
    """A `BaseTuner` whose `_create_and_replace` is the flow above; a subclass says which modules are its
    layers (`_is_own_layer`), how it wraps a new one (`_new_layer`) and, optionally, what follows each
    module (`_layer_done`)."""

    def _is_own_layer(self, target: nn.Module) -> bool:
        """Whether ``target`` is already this tuner's layer (it then gets the new adapter added)."""
        raise NotImplementedError

    def _new_layer(
        self, target: nn.Module, adapter_name: str, config: PeftConfig, current_key: str
    ) -> nn.Module:
        """This tuner's layer around ``target``; a TypeError naming ``current_key`` where it cannot wrap it."""
        raise NotImplementedError

    def _layer_done(self) -> None:
        """Called after each targeted module is adapted (by default nothing)."""

    def _create_and_replace(
        self,
        config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if self._is_own_layer(target):
            target.update_layer(adapter_name, config)
        else:
            new_module = self._new_layer(target, adapter_name, config, current_key)
            if adapter_name not in self.active_adapters:
                new_module.requires_grad_(False)  # an additional adapter is not trainable until activated
            self._replace_module(parent, target_name, new_module, target)
        self._layer_done()
