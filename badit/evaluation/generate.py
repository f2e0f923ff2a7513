"""Batched greedy generation: left padding, KV cache, answer = generated tokens only."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from badit.adapter import routing_tasks
from badit.data.batches import DataCollator


def eos_token_ids(model, tokenizer=None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation-config EOS ids
    (chat models often list their end-of-turn token there)."""
    ids = [getattr(tokenizer, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)]
    flat = [i for x in ids for i in (x if isinstance(x, list) else [x]) if i is not None]
    if not flat:
        raise ValueError("no EOS token: set tokenizer.eos_token or model.generation_config.eos_token_id")
    return sorted(set(flat))


@torch.inference_mode()
def generate_ids(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int | list[int],
    max_new_tokens: int = 50,
    batch_size: int = 16,
    stop_strings: list[str] | None = None,
    tokenizer=None,
    progress: str | None = None,
    task_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), without the prompt and cut before the first EOS.

    Prompts are batched longest first (less padding; a too-large batch fails at once), left-padded, with
    the attention mask passed, so batched and one-by-one results agree. `stop_strings` (needs
    `tokenizer`) ends a sequence once its text contains one of them. `progress`: the label of a progress
    bar over the examples (examples/s, ETA); None shows none. `task_ids`: each prompt's task id, for
    adapters that route by task (`routing="task"`, badit.routing_tasks).
    """
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=eos,
        use_cache=True,
        stop_strings=stop_strings,
    )
    collate = DataCollator(pad_token_id, padding_side="left")
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=progress, unit="ex", dynamic_ncols=True, disable=progress is None)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = collate([{"input_ids": list(prompts[i])} for i in index])
        tasks = None if task_ids is None else torch.tensor([task_ids[i] for i in index], device=device)
        with routing_tasks(model, tasks) if tasks is not None else nullcontext():
            output = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                generation_config=config,
                tokenizer=tokenizer if stop_strings else None,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()  # strip the prompt by token count
        for i, tokens in zip(index, new_tokens):
            ends = [k for k, t in enumerate(tokens) if t in eos]
            results[i] = tokens[: ends[0]] if ends else tokens
        bar.update(len(index))
    bar.close()
    return results


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 50,
    batch_size: int = 16,
    stop_at_newline: bool = False,
    progress: str | None = None,
    task_ids: Sequence[int] | None = None,
) -> list[str]:
    """Decoded greedy answers to tokenised prompts (special tokens dropped, whitespace stripped);
    with `stop_at_newline` each answer ends before its first newline. `progress`, `task_ids`: see
    `generate_ids`."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = generate_ids(
        model,
        prompts,
        pad_token_id=pad,
        eos_token_id=eos_token_ids(model, tokenizer),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_strings=["\n"] if stop_at_newline else None,
        tokenizer=tokenizer,
        progress=progress,
        task_ids=task_ids,
    )
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    if stop_at_newline:
        texts = [t.split("\n", 1)[0] for t in texts]
    return [t.strip() for t in texts]
