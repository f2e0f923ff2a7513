"""The causal-LM loss with the LM head applied to the labelled positions only.

A causal LM's forward computes logits (batch, seq, vocab) for every position, padding and prompt
included, although the loss reads only the positions whose next token is labelled (the answer:
at most ``max_target_length`` of up to 1024 positions). With SmolLM2's 49k vocabulary those logits,
their log-softmax and their gradient dominate a training step's memory. Here the LM head gets only
the hidden states of the labelled positions (gathered by a forward pre-hook on the model's output
embeddings), and the loss is the same token-level cross-entropy over the same targets as
transformers' ``ForCausalLMLoss`` (shift by one, ignore -100, sum / ``num_items_in_batch`` or mean),
so it equals the full-logits loss within float rounding (tests/test_training_loss.py).

Written here because no maintained library does it on CPU and GPU alike: Liger-Kernel's fused linear
cross-entropy needs Triton (CUDA), and transformers' ``logits_to_keep`` keeps the same positions of
every sequence (a suffix or one index list), which misses right-padded answers of different lengths.
Models whose forward does not call ``get_output_embeddings()`` (the hook then never fires) get the
ordinary full-logits loss: ``causal_lm_loss`` recognises full-shaped logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # as badit.data.IGNORE_INDEX and transformers' losses


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) the label each position predicts: ``labels[:, t + 1]``, IGNORE at the last position."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool: the positions whose next token is labelled (where the loss reads a logit)."""
    return shifted_labels(labels) != IGNORE_INDEX


@contextmanager
def lm_head_on(model: torch.nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """While active, the output embeddings (LM head) of ``model`` see only the hidden states at
    ``positions`` ((batch, seq) bool): an input (batch, seq, hidden) becomes (N, hidden) with N =
    positions.sum(), rows in row-major order (sequence by sequence), so the logits are (N, vocab).

    ``model`` is the unwrapped model (a PeftModel or a transformers model). An input of another shape
    (e.g. a caller's ``logits_to_keep``) is left alone.
    """
    head = model.get_output_embeddings()
    if head is None:
        yield
        return

    def gather(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != positions.shape:
            return None
        return (hidden[positions.to(hidden.device)], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Token-level cross-entropy of next-token prediction, as transformers' ``ForCausalLMLoss``.

    ``logits``: (N, vocab) at the labelled positions (``lm_head_on``), or (batch, seq, vocab) at every
    position; ``labels``: (batch, seq) with -100 where there is no target. The sum over targets is
    divided by ``num_items_in_batch`` (the labelled tokens of the whole accumulated batch, as the
    Trainer counts them) when given, else the mean. Logits are upcast to float32 first, as there.
    """
    targets = shifted_labels(labels.to(logits.device))
    if logits.dim() == 3:  # full logits: the model did not go through the hook
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    else:
        targets = targets[targets != IGNORE_INDEX]
        if logits.shape[0] != targets.numel():
            raise ValueError(
                f"{logits.shape[0]} logit rows for {targets.numel()} labelled positions: the LM head "
                "received hidden states of another shape than the labels'"
            )
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def trainer_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """``Trainer(compute_loss_func=...)``'s signature over ``causal_lm_loss``."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    return causal_lm_loss(logits, labels, num_items_in_batch)
