"""Batched greedy generation with left padding agrees with one-by-one generation."""

from __future__ import annotations

import torch

from badit.evaluation import generate_ids
from tests.helpers import make_tiny_model

PAD, EOS = 0, 2


def random_prompts(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 11, 7, 1, 9, 5]
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]


def test_batched_left_padded_generation_equals_one_by_one(family):
    model = make_tiny_model(family)
    prompts = random_prompts()
    kwargs = dict(pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=6)
    batched = generate_ids(model, prompts, batch_size=4, **kwargs)
    alone = [generate_ids(model, [p], batch_size=1, **kwargs)[0] for p in prompts]
    assert batched == alone
    assert all(0 < len(ids) <= 6 for ids in batched)  # the answer only: the prompt is stripped


def test_generation_stops_at_eos_and_drops_it():
    model = make_tiny_model("llama")
    prompts = random_prompts(1)
    full = generate_ids(model, prompts, pad_token_id=PAD, eos_token_id=127, max_new_tokens=8)
    assert len(full[0]) == 8  # 127 never came: ran to max_new_tokens
    stop = full[0][3]  # make the 4th generated token of the first prompt the end of sequence
    cut = generate_ids(model, prompts, pad_token_id=PAD, eos_token_id=[127, stop], max_new_tokens=8)[0]
    assert cut == full[0][: full[0].index(stop)]


def test_progress_bar_counts_examples(capsys):
    model = make_tiny_model("llama")
    prompts = random_prompts()
    generate_ids(model, prompts, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=2, batch_size=4)
    assert capsys.readouterr().err == ""  # no bar unless asked for
    generate_ids(
        model, prompts, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=2, batch_size=4, progress="eval"
    )
    final = capsys.readouterr().err.split("\r")[-1]
    assert final.startswith("eval: 100%") and "6/6" in final and "ex/s" in final  # 6 prompts, 2 batches
