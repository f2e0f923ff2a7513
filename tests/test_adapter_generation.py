"""Generation: KV cache, no cache and full recomputation agree, and route like teacher-forced training."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

import badit
from tests.helpers import make_tiny_model

NEW_TOKENS = 6
ROUTED_LAYERS = 2  # the default target gate_proj in each of the tiny models' 2 decoder layers


@pytest.fixture
def trained_model(family):
    model = get_peft_model(
        make_tiny_model(family), badit.BaditConfig(regroup=False, task_type="CAUSAL_LM")
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "badit_router" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))  # routing differs between sequences
            elif p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 128, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0
    attention_mask[1, :2] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def greedy_by_recomputation(model, input_ids, attention_mask) -> torch.Tensor:
    """Greedy decoding that runs the whole sequence every step, routing on the prompt tokens."""
    prompt = attention_mask.bool()
    for _ in range(NEW_TOKENS):
        prompt_mask = F.pad(prompt, (0, input_ids.shape[1] - prompt.shape[1]), value=False)
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            prompt_mask=prompt_mask,
        )
        next_token = out.logits[:, -1].argmax(-1, keepdim=True)
        input_ids = torch.cat([input_ids, next_token], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)
    return input_ids


def generate(model, input_ids, attention_mask, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            **kwargs,
        )


def test_cached_generation_matches_recomputation_and_training_routing(trained_model):
    input_ids, attention_mask = left_padded_prompts()
    cached = generate(trained_model, input_ids, attention_mask)
    routing_at_generation = {k: v.clone() for k, v in badit.get_routing_weights(trained_model).items()}
    assert torch.equal(cached, greedy_by_recomputation(trained_model, input_ids, attention_mask))
    assert torch.equal(cached, generate(trained_model, input_ids, attention_mask, use_cache=False))

    # Teacher forcing on prompt + answer, prompt tokens marked by labels == -100, routes the same way.
    full_mask = torch.cat([attention_mask, torch.ones(3, NEW_TOKENS, dtype=attention_mask.dtype)], dim=1)
    labels = cached.clone()
    labels[:, : input_ids.shape[1]] = -100
    with torch.no_grad():
        trained_model(
            input_ids=cached, attention_mask=full_mask, labels=labels, position_ids=positions(full_mask)
        )
    routing_in_training = badit.get_routing_weights(trained_model)
    assert len(routing_at_generation) == ROUTED_LAYERS  # the loop below checks every routed layer
    assert routing_in_training.keys() == routing_at_generation.keys()
    for name, weights in routing_in_training.items():
        torch.testing.assert_close(routing_at_generation[name], weights, atol=1e-5, rtol=1e-5)
        assert (weights[0] - weights[2]).abs().max() > 1e-3  # sequences really route differently


def test_routing_ignores_answer_tokens_and_padding(trained_model):
    input_ids, attention_mask = left_padded_prompts()
    with torch.no_grad():
        trained_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask)
        )
    prompt_only = {k: v.clone() for k, v in badit.get_routing_weights(trained_model).items()}
    # Different padding token ids and an arbitrary answer with labels: the routing stays the same.
    answer = torch.randint(3, 128, (3, 4))
    noisy_ids = torch.cat([input_ids.masked_fill(attention_mask == 0, 77), answer], dim=1)
    full_mask = torch.cat([attention_mask, torch.ones_like(answer)], dim=1)
    labels = torch.cat([torch.full_like(input_ids, -100), answer], dim=1)
    with torch.no_grad():
        trained_model(
            input_ids=noisy_ids, attention_mask=full_mask, labels=labels, position_ids=positions(full_mask)
        )
    with_answer = badit.get_routing_weights(trained_model)
    assert len(prompt_only) == ROUTED_LAYERS and with_answer.keys() == prompt_only.keys()
    for name, weights in with_answer.items():
        torch.testing.assert_close(weights, prompt_only[name], atol=1e-5, rtol=1e-5)
