"""Take a BADIT adapter out of badit: with a fixed routing it is a plain LoRA, or a merged model.

With fixed mixing weights g (K,) per layer (post-softmax, post-scale: what `set_fixed_routing` takes), a BADIT
layer computes residual(x) + s * B diag(g_c) A x, with residual = W - s * B0 A0 and g_c = g repeated r
times (gate="components"). Its change to the pretrained weight W is therefore

    delta W = s * (B diag(g_c) A - B0 A0) = s * [B diag(g_c), -B0] @ [A; A0],

a LoRA of rank 2*K*r with lora_A = [A; A0] (2Kr, in), lora_B = [B diag(g_c), -B0] (out, 2Kr) and
scaling s = lora_alpha / r_lora, i.e. lora_alpha = s * 2Kr. With gate="delta" the layer computes
residual(x) + s * (B diag(g_c) A + B0 diag(1 - g_c) A0) x, so delta W = s * (B diag(g_c) A - B0 diag(g_c) A0)
and lora_B = [B diag(g_c), -B0 diag(g_c)]. The export is exact up to float32 rounding.
Serving stacks that load PEFT LoRA folders (PEFT itself, vLLM `--enable-lora`, TGI) need nothing from badit.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file
from torch import nn

from badit.adapter.integrity import nonfinite_tensor
from badit.adapter.layer import BaditLinear
from badit.errors import BaditError
from badit.outputs import check_output_folder, mark_output_folder
from badit.regrouping.gradients import is_badit_layer

Routing = torch.Tensor | Mapping[str, torch.Tensor] | None
"""A (K,) vector for every layer, a dict layer name -> (K,), or None for uniform routing."""


class ExportError(BaditError, ValueError):
    """The adapter cannot be exported as asked (the message says why and what to do)."""


def badit_layers(model: nn.Module) -> dict[str, BaditLinear]:
    """Adapted layers by name (as in the base model, e.g. "model.layers.0.mlp.gate_proj")."""
    return {m.layer_name: m for m in model.modules() if is_badit_layer(m)}


def uniform_routing(layer: BaditLinear, adapter_name: str) -> torch.Tensor:
    """Every expert weighted equally, in `set_fixed_routing`'s scale: router_scale / K each (1 with "preserve")."""
    state = layer.badit_state[adapter_name]
    return torch.full((state.num_experts,), state.router_scale / state.num_experts)


def layer_routing(routing: Routing, layer: BaditLinear, adapter_name: str) -> torch.Tensor:
    """The (K,) mixing weights `routing` gives `layer` (float32); raises ExportError on a missing layer / size."""
    if routing is None:
        weights = uniform_routing(layer, adapter_name)
    elif isinstance(routing, Mapping):
        if layer.layer_name not in routing:
            raise ExportError(f"export: the routing gives no weights for layer '{layer.layer_name}'")
        weights = torch.as_tensor(routing[layer.layer_name])
    else:
        weights = torch.as_tensor(routing)
    k = layer.badit_state[adapter_name].num_experts
    if weights.shape != (k,):
        raise ExportError(
            f"export: layer '{layer.layer_name}' has {k} experts but the routing has shape {tuple(weights.shape)}; "
            f"give {k} mixing weights"
        )
    return weights.detach().float().cpu()


@torch.no_grad()
def mean_routing(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """Each layer's mixing weights (K,) averaged over every sequence of `batches` (e.g. one task's prompts).

    The batches are model inputs (input_ids, attention_mask, and labels with -100 on the prompt or a
    prompt_mask, so the routers pool what they pool in training). The result is in the scale that
    `set_fixed_routing` and the exports take: a task's mean routing.
    """
    layers = _check_exportable(model, adapter_name)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(**batch)
            for name, layer in layers.items():
                weights = layer.badit_state[adapter_name].routing_weights.float().cpu()
                sums[name] = sums.get(name, 0) + weights.sum(dim=0)
            count += next(iter(batch.values())).shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ExportError("mean_routing: no sequences given")
    return {name: total / count for name, total in sums.items()}


def lora_factors(
    layer: BaditLinear, adapter_name: str, routing: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """lora_A (2Kr, in) and lora_B (out, 2Kr) whose product times the layer's scaling is its weight change."""
    if not layer.badit_state[adapter_name].removed:
        raise ExportError(f"export: adapter '{adapter_name}' of layer '{layer.layer_name}' was never loaded")
    a, b = (
        layer.badit_A[adapter_name].detach().float().cpu(),
        layer.badit_B[adapter_name].detach().float().cpu(),
    )
    a0, b0 = layer.badit_A0[adapter_name].float().cpu(), layer.badit_B0[adapter_name].float().cpu()
    state = layer.badit_state[adapter_name]
    component_gate = routing.repeat_interleave(state.r)
    # gate="delta": the gate scales B A - B0 A0, so the initial components carry it too (module docstring)
    initial_gate = component_gate if state.gate_delta else torch.ones_like(component_gate)
    return torch.cat([a, a0], dim=0), torch.cat(
        [b * component_gate[None, :], -b0 * initial_gate[None, :]], dim=1
    )


def _check_exportable(model: nn.Module, adapter_name: str) -> dict[str, BaditLinear]:
    layers = badit_layers(model)
    if not layers:
        raise ExportError(
            "export: the model has no BADIT layers; pass the PeftModel returned by get_peft_model"
        )
    for layer in layers.values():
        if adapter_name not in layer.badit_A:
            raise ExportError(
                f"export: layer '{layer.layer_name}' has no adapter '{adapter_name}'; known: {sorted(layer.badit_A)}"
            )
        if layer.merged:
            raise ExportError(f"export: layer '{layer.layer_name}' has merged adapters; call unmerge() first")
    return layers


def _replace_directory(staging: Path, output: Path) -> None:
    """Move a finished staging folder to `output` (replacing an earlier export), never half-written."""
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}-old-", dir=output.parent))
        os.replace(output, old / output.name)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


@contextmanager
def _staged(output: Path, readme: str | None) -> Iterator[Path]:
    """A staging folder beside `output` for the body of the ``with`` to write; when the body succeeds and
    every tensor written is finite, the model card `readme` (None: none) and the export marker are added
    and the folder replaces `output` whole; it is removed in any case, so a failed export leaves neither a
    half-written folder nor debris. `output` must be new, empty or an earlier export
    (`badit.outputs.check_output_folder`): an export never replaces a run or anyone's files."""
    output = check_output_folder(output, "export")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        yield staging
        for tensors in sorted(staging.glob("*.safetensors")):
            problem = nonfinite_tensor(tensors)
            if problem is not None:
                raise ExportError(
                    f"export: tensor {problem} holds NaN or inf (the adapter or the routing is not finite); "
                    "nothing was written"
                )
        if readme is not None:
            (staging / "README.md").write_text(readme, encoding="utf-8")
        mark_output_folder(staging, "export")
        _replace_directory(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_lora(
    model: nn.Module,
    output: str | os.PathLike,
    routing: Routing = None,
    adapter_name: str = "default",
    base_model_name_or_path: str | None = None,
    readme: str | None = None,
) -> Path:
    """Write adapter `adapter_name` under a fixed `routing` as a plain PEFT LoRA folder (rank 2*K*r, exact).

    Args:
        model: the PeftModel (or BaditModel) holding the adapter.
        output: the folder to write (replaced if it exists).
        routing: (K,) for every layer, a dict layer name -> (K,), or None (uniform); mixing weights in the
            scale of `set_fixed_routing` (post-softmax, times K with router_scale="preserve").
        base_model_name_or_path: recorded in adapter_config.json; default: the adapter config's.
        readme: the model card (README.md) to write into the folder; None: none.
    Returns the folder. It loads with `PeftModel.from_pretrained(base, folder)` without badit.
    """
    layers = _check_exportable(model, adapter_name)
    first = next(iter(layers.values())).badit_state[adapter_name]
    rank, scaling = 2 * first.num_experts * first.r, first.scaling
    fan_in_fan_out = next(iter(layers.values())).fan_in_fan_out
    state = {}
    for name, layer in layers.items():
        adapter = layer.badit_state[adapter_name]
        if 2 * adapter.num_experts * adapter.r != rank or adapter.scaling != scaling:
            raise ExportError(f"export: layer '{name}' has another rank or scaling than the others")
        if layer.fan_in_fan_out != fan_in_fan_out:  # one LoraConfig flag for all layers
            raise ExportError(
                f"export: layer '{name}' mixes nn.Linear and Conv1D targets; export them as separate adapters"
            )
        lora_a, lora_b = lora_factors(layer, adapter_name, layer_routing(routing, layer, adapter_name))
        # PEFT's saved key layout: base_model.model.<module>.lora_A.weight (the adapter name is dropped).
        state[f"base_model.model.{name}.lora_A.weight"] = lora_a.contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = lora_b.contiguous()
    badit_config = getattr(model, "peft_config", {}).get(adapter_name)
    if base_model_name_or_path is None and badit_config is not None:
        base_model_name_or_path = badit_config.base_model_name_or_path
    config = LoraConfig(
        r=rank,
        lora_alpha=scaling * rank,  # scaling = lora_alpha / r = BADIT's s
        lora_dropout=0.0,
        target_modules=sorted(layers),
        bias="none",
        # GPT-2's Conv1D layers store (in, out): PEFT's LoRA merges into them transposed with this flag
        fan_in_fan_out=fan_in_fan_out,
        task_type=getattr(badit_config, "task_type", None),
        base_model_name_or_path=base_model_name_or_path,
    )
    output = Path(output)
    with _staged(output, readme) as staging:
        config.save_pretrained(staging)
        save_file(state, staging / "adapter_model.safetensors", metadata={"format": "pt"})
    return output


def export_merged(
    model: nn.Module,
    output: str | os.PathLike,
    routing: Routing = None,
    adapter_name: str = "default",
    tokenizer=None,
    dtype: torch.dtype | None = None,
    readme: str | None = None,
) -> Path:
    """Write the base model with adapter `adapter_name` merged under a fixed `routing` (plain transformers).

    Works on a copy (the model in memory is left as it is; needs memory for a second model). The merge is
    computed in float32 and the merged model saved in ``dtype`` (None: the model's dtype in memory);
    ``tokenizer`` and ``readme`` (a model card) are written beside it when given. Quantised bases cannot be
    merged into a full-precision folder here: export a LoRA instead.
    """
    layers = _check_exportable(model, adapter_name)
    for layer in layers.values():
        if layer.quantization is not None:
            raise ExportError(
                f"export: layer '{layer.layer_name}' has a quantised base ({layer.quantization}); "
                "--format merged needs a full-precision base: export --format lora instead"
            )
    routing_per_layer = {name: layer_routing(routing, layer, adapter_name) for name, layer in layers.items()}
    copied = copy.deepcopy(model)
    tuner = copied.base_model if hasattr(copied, "base_model") else copied
    tuner.set_fixed_routing(routing_per_layer, adapter_name=adapter_name)
    merged = tuner.merge_and_unload(adapter_names=[adapter_name])
    if dtype is not None:
        merged = merged.to(dtype)
    output = Path(output)
    with _staged(output, readme) as staging:
        merged.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return output


@torch.no_grad()
def routing_distance(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    routing: Routing = None,
    adapter_name: str = "default",
) -> dict[str, float]:
    """How far a fixed ``routing`` (what an export computes) is from the live router on ``batches``.

    Each batch holds prompts, right-padded (input_ids, attention_mask, and prompt_mask or labels so that
    the routers pool what they pool in training). Compared: the next-token logits at each prompt's last
    token (the first answer token's distribution), live router vs fixed routing. Returns ``prompts`` (n),
    ``max_abs_logit`` (largest difference over prompts and vocabulary), ``mean_max_abs_logit`` (the mean
    over prompts of each one's largest difference) and ``argmax_agreement`` (fraction of prompts whose
    greedy next token is the same). The model's own fixed routing, if any, is restored afterwards.
    """
    layers = _check_exportable(model, adapter_name)
    fixed = {name: layer_routing(routing, layer, adapter_name) for name, layer in layers.items()}
    before = {name: layer.fixed_routing(adapter_name) for name, layer in layers.items()}
    largest, agree, count = [], 0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            rows = torch.arange(batch["input_ids"].shape[0])
            last = batch["attention_mask"].sum(dim=1) - 1  # right padding: each prompt's last token
            logits = []
            for weights in (None, fixed):
                for name, layer in layers.items():
                    layer.set_fixed_routing(adapter_name, None if weights is None else weights[name])
                logits.append(model(**batch).logits[rows, last].float().cpu())
            live, frozen = logits
            largest.append((live - frozen).abs().amax(dim=-1))
            agree += int((live.argmax(dim=-1) == frozen.argmax(dim=-1)).sum())
            count += len(rows)
    finally:
        for name, layer in layers.items():
            layer.set_fixed_routing(adapter_name, before[name])
        model.train(was_training)
    if count == 0:
        raise ExportError("routing_distance: no prompts given")
    per_prompt = torch.cat(largest)
    return {
        "prompts": float(count),
        "max_abs_logit": float(per_prompt.max()),
        "mean_max_abs_logit": float(per_prompt.mean()),
        "argmax_agreement": agree / count,
    }
