"""Shared fixtures: tiny random-weight causal LMs built in code (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FAMILIES = ("llama", "qwen3", "gemma2")

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def make_tiny_model(family: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A 2-layer causal LM of the given family with random weights, float32, eval mode."""
    torch.manual_seed(seed)
    kw = {**_COMMON, **overrides}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **kw))
    elif family == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(head_dim=16, sliding_window=64, **kw))
    else:
        raise ValueError(f"unknown family {family!r}")
    # Random init uses std 0.02: scale up so the spectrum is not flat and logits are not all ~0.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model.float().eval()


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(family):
    return make_tiny_model(family)
