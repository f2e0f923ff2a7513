"""bitsandbytes 4-bit / 8-bit base layers: read the weight as floats, write a residual back quantised.

BADIT on a quantised base follows PiSSA's recipe for QLoRA (Meng et al. 2024, and PEFT's
`init_lora_weights="pissa"` on bitsandbytes layers): the SVD runs on the dequantised weight W_q, the
residual R = W_q - s * B0 A0 is quantised again and stored in the base layer. The model at
initialisation then differs from the quantised pretrained model only by R's quantisation error:

  - NF4 / FP4 (`Linear4bit`): per element |Q(R) - R| <= 0.152 * max|R| over its block of `blocksize`
    (64) weights, 0.152 being half the widest gap between adjacent NF4 levels (-1 and -0.6962); double
    quantisation of the block maxima adds a relative 1e-2 or so to that bound;
  - LLM.int8 (`Linear8bitLt`): per element |Q(R) - R| <= max|R| over its output row / 127, one
    quantisation step (round-to-nearest would give half a step; bitsandbytes 0.50 on CPU, which goes
    through float16, was measured at up to 0.53 step).

R has its largest directions removed, so its block maxima, and with them the error, are usually
smaller than those of W itself. The dequantise / re-quantise calls are PEFT's and bitsandbytes' own
(`peft.utils.integrations.dequantize_bnb_weight`, `Params4bit`, `Int8Params`), as PEFT's LoRA merge
uses them. Every residual update (adding, deleting, merging an adapter) re-quantises once more.
"""

from __future__ import annotations

import torch
from torch import nn

NF4_HALF_GAP = (1.0 - 0.6961928009986877) / 2  # widest gap between adjacent NF4 levels, halved
INT8_LEVELS = 127


def quantization_kind(layer: nn.Module) -> str | None:
    """ "4bit" for a bitsandbytes `Linear4bit`, "8bit" for a `Linear8bitLt`, None for a plain layer."""
    name = type(layer.weight).__name__ if hasattr(layer, "weight") else ""
    if name == "Params4bit":
        return "4bit"
    if name == "Int8Params":
        return "8bit"
    return None


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight (out, in) as float32, dequantised when it is a bitsandbytes layer."""
    if quantization_kind(layer) is None:
        return layer.weight.detach().float()
    from peft.utils.integrations import dequantize_bnb_weight

    return dequantize_bnb_weight(layer.weight, state=getattr(layer, "state", None)).detach().float()


def store_quantized(layer: nn.Module, weight: torch.Tensor) -> None:
    """Replace a bitsandbytes layer's weight with `weight` (out, in) quantised the same way."""
    import bitsandbytes as bnb

    old = layer.weight
    if quantization_kind(layer) == "4bit":
        # Params4bit's own constructor arguments, as PEFT's LoRA merge passes them.
        kwargs = {k: v for k, v in old.__dict__.items() if not k.startswith("_") and k != "data"}
        kwargs.update(requires_grad=False, bnb_quantized=False)
        kwargs.pop("quant_state", None)
        new = bnb.nn.Params4bit(
            weight.to("cpu", getattr(layer, "compute_dtype", None) or torch.float32), **kwargs
        )
        layer.weight = new.to(old.device)
    else:
        new = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=old.has_fp16_weights)
        layer.weight = new.to(old.device)
        layer.state.reset_grads()
        layer.state.SCB = None


def error_bound(layer: nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """Per-element bound (out, in) on |Q(residual) - residual| for the layer's quantisation (see module doc)."""
    kind = quantization_kind(layer)
    if kind == "8bit":
        return (residual.abs().amax(dim=1, keepdim=True) / INT8_LEVELS).expand_as(residual)
    if kind == "4bit":
        blocksize = layer.weight.blocksize
        flat = residual.reshape(-1, blocksize)
        return (flat.abs().amax(dim=1, keepdim=True) * NF4_HALF_GAP).expand_as(flat).reshape(residual.shape)
    return torch.zeros_like(residual)
