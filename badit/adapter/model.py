"""`BaditModel`: the PEFT tuner that puts BADIT layers into a Hugging Face model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from tqdm.auto import tqdm

from badit.adapter.config import BaditConfig
from badit.adapter.layer import BaditLayer, BaditLinear, is_adaptable
from badit.adapter.routing import RoutingState
from badit.adapter.tuner import AdapterTuner
from badit.regrouping import attach_gradient_tracking
from badit.regrouping.gradients import is_badit_layer


class BaditModel(AdapterTuner):
    """BADIT tuner; build it with `peft.get_peft_model(model, BaditConfig(...))` after `import badit`.

    Besides PEFT's usual API it offers:
      - `forward(..., prompt_mask=...)`: a (batch, seq) bool mask of the tokens the routers pool (by default
        the attended tokens whose label is -100, or all attended tokens when there are no labels);
      - `generate(...)`: routing on the prompt only, identical with and without KV cache;
      - `set_fixed_routing(weights)`: a routing vector for every input, which `merge_and_unload()` needs.
    """

    prefix: str = "badit_"
    tuner_layer_cls = BaditLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model: nn.Module, config, adapter_name: str, **kwargs: Any) -> None:
        # Set before nn.Module.__init__, which builds the layers that share this state.
        self.__dict__["routing_state"] = RoutingState()
        super().__init__(model, config, adapter_name, **kwargs)
        self._routing_hook = self.model.register_forward_pre_hook(
            self.routing_state.capture, with_kwargs=True
        )
        adapter_config = self.peft_config[adapter_name]
        if adapter_config.regroup:
            self._attach_regroup_tracking()

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """PEFT's, with a progress bar over the adapted layers (each one SVD of its weight; tqdm shows
        it only once it has run for 2 s, so small models stay silent)."""
        with tqdm(desc=f"BADIT init ({adapter_name})", unit="layer", delay=2, leave=False) as bar:
            self.__dict__["_init_progress"] = bar
            try:
                super().inject_adapter(model, adapter_name, *args, **kwargs)
            finally:
                self.__dict__.pop("_init_progress", None)

    def _attach_regroup_tracking(self) -> None:
        attach_gradient_tracking(self)

    def _is_own_layer(self, target: nn.Module) -> bool:
        return is_badit_layer(target)

    def _new_layer(
        self, target: nn.Module, adapter_name: str, config: BaditConfig, current_key: str
    ) -> nn.Module:
        if isinstance(target, BaseTunerLayer) or not is_adaptable(target):
            quantised = "quant" in type(target).__name__.lower() or "quant" in type(target).__module__.lower()
            hint = (
                " Of quantised layers, BADIT supports bitsandbytes 4-bit and 8-bit ones (Linear4bit, "
                "Linear8bitLt): load the model with BitsAndBytesConfig, or in full precision."
                if quantised
                else ""
            )
            raise TypeError(
                f"BADIT cannot adapt module '{current_key}' of type {type(target).__name__}: only torch.nn.Linear "
                f"and transformers' Conv1D (GPT-2) layers are supported; remove it from target_modules (or list it in exclude_modules).{hint}"
            )
        new_module = BaditLinear(target, adapter_name, config, layer_name=current_key)
        new_module.routing_state = self.__dict__["routing_state"]
        return new_module

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's adapter dtype policy: float32 factors by default (BADIT creates them so), the base
        weight's dtype with `autocast_adapter_dtype=False`."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)
        if autocast_adapter_dtype:
            return
        for module in self.model.modules():
            if is_badit_layer(module):
                module.cast_adapter(adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name: str, state_dict: dict) -> dict:
        """PEFT's key mapping, plus the fixed routings (`set_fixed_routing`): a model that has none yet
        holds no key to map them to, so PEFT would pass them through without the adapter name."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        return {
            (f"{key}.{adapter_name}" if key.endswith(".badit_fixed_routing") else key): value
            for key, value in remapped.items()
        }

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: refused with one line that says what to do instead."""
        raise NotImplementedError(
            "BADIT does not support add_weighted_adapter: each adapter mixes its experts per input sequence, so "
            "no weighted sum of two adapters' factors computes either one; fix a routing and export each adapter "
            "to LoRA (`badit export`, badit.adapter.export), then combine those with LoRA's add_weighted_adapter "
            "or `badit merge`"
        )

    def _layer_done(self) -> None:
        progress = self.__dict__.get("_init_progress")
        if progress is not None:
            progress.update()

    # ------------------------------------------------------------------ mixed batches

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """`adapter_names=[...]` in forward / generate: each sequence through its adapter (PEFT LoRA's contract).

        PeftModel calls this around forward and generate and drops `adapter_names` from the kwargs itself.
        "__base__" selects the pretrained model; unknown names raise; training mode raises.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError(
                "Cannot pass `adapter_names` when the model is in training mode; call model.eval()"
            )
        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError(f"adapter_names must be a list of str (one per sequence), got {adapter_names!r}")
        known = set(self.peft_config)
        unknown = sorted(set(adapter_names) - known - {"__base__"})
        if unknown:
            raise ValueError(
                f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}; known: {sorted(known)} "
                "and '__base__'"
            )
        with self.routing_state.mixed_batch(adapter_names):
            yield

    # ------------------------------------------------------------------ routing

    def forward(self, *args: Any, **kwargs: Any):
        """The wrapped model's forward; accepts `prompt_mask` (batch, seq) bool."""
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, prompt_mask: torch.Tensor | None = None, **kwargs: Any):
        """`model.generate` with routing on the prompt tokens (all attended input tokens unless `prompt_mask`)."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if prompt_mask is None:
            prompt_mask = kwargs.get("attention_mask")
        if prompt_mask is None:
            reference = input_ids if input_ids is not None else kwargs["inputs_embeds"]
            prompt_mask = torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device)
        with self.routing_state.generating(prompt_mask):
            return self.model.generate(*args, **kwargs)

    def set_fixed_routing(
        self, weights: torch.Tensor | Mapping[str, torch.Tensor] | None, adapter_name: str | None = None
    ) -> None:
        """Use fixed expert mixing weights instead of the router, e.g. to merge the adapter.

        Args:
            weights: one tensor (K,) for every layer, or a dict from layer name (as in
                `badit.get_routing_weights`) to a (K,) tensor, or None to go back to the router.
                Mixing weights are post-softmax and post-scale: with router_scale="preserve", all ones
                reproduce the initial (pretrained) model.
            adapter_name: the adapter to fix; default the active one.
        """
        adapter_name = adapter_name or self.active_adapters[0]
        layers = {m.layer_name: m for m in self.model.modules() if is_badit_layer(m)}
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(layers))
            if unknown:
                raise KeyError(
                    f"set_fixed_routing: no BADIT layer named {unknown[:3]}; known: {sorted(layers)[:3]}..."
                )
            missing = sorted(set(layers) - set(weights))
            if missing:
                raise KeyError(f"set_fixed_routing: no routing given for layers {missing[:3]}")
        for name, layer in layers.items():
            layer_weights = weights[name] if isinstance(weights, Mapping) else weights
            layer.set_fixed_routing(adapter_name, layer_weights)


def _routing_state(model: nn.Module) -> RoutingState | None:
    for module in model.modules():
        if is_badit_layer(module) and module.routing_state is not None:
            return module.routing_state
    return None


def uses_task_routing(model: nn.Module) -> bool:
    """Whether an adapter of `model` routes by task id (routing="task") and so needs `routing_tasks`."""
    return any(
        state.route_by_task for m in model.modules() if is_badit_layer(m) for state in m.badit_state.values()
    )


@contextmanager
def routing_tasks(model: nn.Module, task_ids: torch.Tensor | None) -> Iterator[None]:
    """Within this context the forwards and `generate` calls of `model` route oracle-routed adapters
    (routing="task") by `task_ids` (batch,): the id of each input sequence's task. A model without
    BADIT layers is left alone, so callers need not check."""
    state = _routing_state(model)
    if state is None:
        yield
        return
    with state.routing_tasks(task_ids):
        yield


def get_routing_weights(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The mixing weights (batch, K) of the last forward, per adapted layer (named as in the base model)."""
    result = {}
    for module in model.modules():
        if is_badit_layer(module):
            name = adapter_name or module.active_adapters[0]
            state = module.badit_state.get(name)
            if state is not None and state.routing_weights is not None:
                result[module.layer_name] = state.routing_weights
    return result
