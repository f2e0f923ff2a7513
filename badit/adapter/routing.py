"""Per-sequence routing: which tokens a layer's router pools, and how router logits become mixing weights.

The model's forward receives the attention mask, labels and KV cache; the adapted layers only see their
input tensor. A forward pre-hook on the model (installed by `BaditModel`) stores what the layers need in a
`RoutingState` shared by all of them, the way PEFT's Poly tuner hands its task ids to every layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

NO_PROMPT_WARNING = (
    "BADIT routing: some sequences have no prompt token marked (e.g. labels without -100, as in plain-text "
    "training); their routers pool over all attended tokens instead. Pass prompt_mask=(batch, seq) bool to "
    "the model (or labels with -100 on the prompt) to route on the prompt only."
)


def mixing_weights(logits: torch.Tensor, top_k: int, scale: float) -> torch.Tensor:
    """Per-sequence expert weights (batch, K): softmax over the `top_k` largest logits (others 0), times `scale`.

    With `top_k == K` this is a dense softmax. `scale` is K for router_scale="preserve" (a zero router then
    gives every expert weight 1, i.e. the pretrained layer) and 1 for "paper" (weights sum to 1).
    """
    if top_k < logits.shape[-1]:
        kept = logits.topk(top_k, dim=-1).indices
        logits = torch.full_like(logits, float("-inf")).scatter(-1, kept, logits.gather(-1, kept))
    return F.softmax(logits, dim=-1) * scale


def task_mixing_weights(
    task_logits: torch.Tensor, task_ids: torch.Tensor, top_k: int, scale: float
) -> torch.Tensor:
    """Oracle routing: the mixing weights (batch, K) of each sequence's task, `mixing_weights` of row
    `task_ids[i]` of the learned `task_logits` (num_tasks, K).

    The upper bound of what routing can buy (docs/method.md, "Routing"): the task is known at train
    and test time, so tasks are told apart perfectly and each learns its own mixture. Ids outside
    [0, num_tasks) raise, as indexing does.
    """
    return mixing_weights(task_logits.index_select(0, task_ids.to(task_logits.device)), top_k, scale)


def gate_delta_coefficients(gate: torch.Tensor) -> torch.Tensor:
    """What the initial components get when the router gates only the learned change (`gate="delta"`).

    The layer computes s * (B g A + B0 (1 - g) A0) = s * B0 A0 + s * g * (B A - B0 A0) per component,
    so the pretrained components keep weight 1 whatever the router says and the gate scales only what
    training changed. Returns 1 - gate, same shape. At gate = 1 (a zero router with
    router_scale="preserve") this is 0 and the layer equals gate="components".
    """
    return 1.0 - gate


MOMENTS_WINDOW = 2000
"""Sequences over which the router input's running moments average: the exact mean of the first 2000
pooled inputs (about 250 steps at batch 8, past the noisy start), an average with that horizon after
(a pooled input drifts slowly as the adapter trains)."""


VARIANCE_FLOOR = 1e-2
"""The smallest feature variance `standardize` divides by, as a fraction of the mean feature variance
(a tenth of the typical standard deviation)."""


def batch_sums(pooled: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(3, d): the sum and the sum of squares of a batch of pooled inputs (batch, d), and its size (in every
    column). Sums, so that data-parallel processes can add theirs (`BaditLinear` all-reduces them) and
    update their moments with the global batch, as one process would."""
    data = pooled.detach().to(dtype)
    return torch.stack([data.sum(0), (data**2).sum(0), torch.full_like(data[0], data.shape[0])])


def update_moments(moments: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """Running moments (3, d) of the router input after a batch with `batch_sums` `sums` (3, d).

    Rows: mean, mean of squares, and the count of sequences seen (in every column). Each batch moves
    the moments towards its own by batch / min(count, MOMENTS_WINDOW): the exact cumulative average until
    the window is full, an exponential average of that horizon after.
    """
    batch = sums[2]
    count = moments[2] + batch
    rate = batch / count.clamp(max=MOMENTS_WINDOW)
    mean = moments[0] + rate * (sums[0] / batch - moments[0])
    square = moments[1] + rate * (sums[1] / batch - moments[1])
    return torch.stack([mean, square, count])


def standardize(pooled: torch.Tensor, moments: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """pooled (batch, d) minus the running mean, over the running standard deviation, per feature.

    The router then sees what sets a sequence apart from the average sequence: the part common to all
    tasks (95-99% of the pooled prompt's norm on the interference suite) and the few huge features of
    the hidden state no longer dominate its logits (docs/method.md, "Routing"). Before any moments exist
    (count 0) the input passes unchanged.
    """
    mean, square = moments[0], moments[1]
    variance = (square - mean**2).clamp_min(0)
    # a feature that barely varies carries no routing signal: its scale is floored at a tenth of the typical
    # feature's standard deviation, so rounding noise in it is not blown up (nor are data-parallel
    # processes' few-ulp differences, which add their sums in another order)
    std = variance.clamp_min(VARIANCE_FLOOR * variance.mean()).add(eps).sqrt()
    standardized = (pooled - mean.to(pooled.dtype)) / std.to(pooled.dtype)
    return torch.where(moments[2, 0] > 0, standardized, pooled)  # no host sync: compiles without a break


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x (batch, seq, d) over the positions where mask (batch, seq) is true; all positions if None.

    A sequence with no selected position gets a zero vector.
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype)
    counts = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bsd,bs->bd", x, weights) / counts


def _right_pad(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or extend (with False) a (batch, seq) mask to `length` columns."""
    if mask.shape[1] >= length:
        return mask[:, :length]
    return F.pad(mask, (0, length - mask.shape[1]), value=False)


def _cached_length(past_key_values: Any) -> int:
    """How many tokens a KV cache already holds (0 when there is none)."""
    if past_key_values is None:
        return 0
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    return int(past_key_values[0][0].shape[-2])  # legacy tuple-of-tuples cache


class RoutingState:
    """What the adapted layers need from the current model call.

    Attributes:
        prompt_mask: (batch, seq) bool, the tokens each layer's router pools; None pools every token.
        reuse: True on cached decoding steps: layers reuse the mixing weights computed at prefill.
        generation_prompt: while `BaditModel.generate` runs, the (batch, prompt_len) mask of prompt tokens, so
            that generation without a KV cache routes on the prompt only, like generation with one.
        requested_adapter_names: the `adapter_names` of the current model call (one per input sequence), set
            by `BaditModel._enable_peft_forward_hooks`; None outside mixed-batch calls.
        adapter_names: the same, expanded to the batch of the current forward (beams / several sequences
            per prompt repeat each name, as Hugging Face repeats the inputs).
        warned_no_prompt: whether the "no prompt token" warning was given (once per model).
        task_ids: (batch,) long, each sequence's task for oracle routing (`routing="task"`), set by
            `routing_tasks`; None otherwise.
    """

    def __init__(self) -> None:
        self.prompt_mask: torch.Tensor | None = None
        self.reuse: bool = False
        self.generation_prompt: torch.Tensor | None = None
        self.requested_adapter_names: list[str] | None = None
        self.adapter_names: list[str] | None = None
        self.warned_no_prompt: bool = False
        self.task_ids: torch.Tensor | None = None

    @contextmanager
    def routing_tasks(self, task_ids: torch.Tensor | None) -> Iterator[None]:
        """Within this context, oracle-routed adapters (`routing="task"`) mix by `task_ids` (batch,)."""
        previous = self.task_ids
        self.task_ids = None if task_ids is None else torch.as_tensor(task_ids, dtype=torch.long)
        try:
            yield
        finally:
            self.task_ids = previous

    def batch_task_ids(self, batch: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The task id of each of `batch` sequences (a subset `rows` for mixed batches); generation's
        repeated rows (beams) repeat their prompt's id, as Hugging Face repeats the inputs."""
        if self.task_ids is None:
            raise RuntimeError(
                "BADIT routing='task' needs each sequence's task id: run the model inside "
                "badit.routing_tasks(model, task_ids) (badit's trainer and evaluation do)"
            )
        ids = self.task_ids
        if rows is not None:
            ids = ids.to(rows.device).index_select(0, rows)
        if ids.shape[0] != batch:
            if ids.shape[0] == 0 or batch % ids.shape[0] != 0:
                raise ValueError(
                    f"routing_tasks got {ids.shape[0]} task ids for a batch of {batch} sequences"
                )
            ids = ids.repeat_interleave(batch // ids.shape[0])
        return ids

    @contextmanager
    def mixed_batch(self, adapter_names: list[str]) -> Iterator[None]:
        """Within this context, sequence i of each model call goes through adapter `adapter_names[i]`."""
        previous = self.requested_adapter_names
        self.requested_adapter_names = list(adapter_names)
        try:
            yield
        finally:
            self.requested_adapter_names = previous
            self.adapter_names = None

    @contextmanager
    def generating(self, prompt_mask: torch.Tensor) -> Iterator[None]:
        """Within this context, un-cached forwards route on `prompt_mask` (padded with False)."""
        previous = self.generation_prompt
        self.generation_prompt = prompt_mask.bool()
        try:
            yield
        finally:
            self.generation_prompt = previous

    def capture(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of the model: record the prompt mask of this call and drop the `prompt_mask` kwarg.

        Prompt tokens are, in order of precedence: the `prompt_mask` kwarg; during `generate`, the prompt
        tokens; `attention_mask & (labels == -100)` when labels are given; else every attended token. When
        the KV cache already holds tokens, the layers reuse the routing of the prefill instead.
        """
        prompt_mask = kwargs.pop("prompt_mask", None)
        tokens = _model_input(args, kwargs)
        batch, length = tokens.shape[0], (tokens.shape[1] if tokens.dim() > 1 else 1)
        self.adapter_names = _expand_names(
            self.requested_adapter_names, batch, generating=self.generation_prompt is not None
        )
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # renamed in transformers 5
        self.reuse = prompt_mask is None and _cached_length(cache) > 0
        if self.reuse:
            self.prompt_mask = None
            return args, kwargs

        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None or attention_mask.dim() != 2:  # absent, or a prepared 4-D mask
            attention_mask = torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        attention_mask = attention_mask[:, -length:].bool()  # a mask may also cover cached tokens

        if prompt_mask is None and self.generation_prompt is not None:
            prompt = self.generation_prompt.to(tokens.device)
            if prompt.shape[0] != batch:  # beams / several sequences per prompt, expanded like HF does
                prompt = prompt.repeat_interleave(batch // prompt.shape[0], dim=0)
            prompt_mask = _right_pad(prompt, length)
        elif prompt_mask is None and kwargs.get("labels") is not None:
            prompt_mask = kwargs["labels"] == -100
        if prompt_mask is None:
            prompt_mask = attention_mask
        if prompt_mask.shape != (batch, length):
            raise ValueError(
                f"prompt_mask has shape {tuple(prompt_mask.shape)} but the input has shape {(batch, length)}: "
                "give one bool per input token (True on prompt tokens)"
            )
        self.prompt_mask = self._with_fallback(prompt_mask.bool() & attention_mask, attention_mask)
        return args, kwargs

    def _with_fallback(self, prompt_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rows of `prompt_mask` with no token marked pool over their attended tokens instead; warn once.

        Without this, such a sequence's pooled router input would be zero: the router gets no gradient and
        never moves (labels without -100, e.g. TRL's SFTTrainer on a plain text field).
        """
        empty = ~prompt_mask.any(dim=1)
        # the warning needs a host sync; a compiled model routes the same but skips it (no graph break)
        if not self.warned_no_prompt and not torch.compiler.is_compiling() and bool(empty.any()):
            self.warned_no_prompt = True
            warnings.warn(NO_PROMPT_WARNING, stacklevel=2)
        return torch.where(empty[:, None], attention_mask, prompt_mask)


def _model_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The tensor whose leading dimensions are (batch, seq) in a model call: `input_ids`, `inputs_embeds`,
    the first positional argument, or else the first tensor keyword argument (`pixel_values=`,
    `input_features=`, a plain module's `X=`)."""
    for candidate in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if torch.is_tensor(candidate):
            return candidate
    found = next((v for v in kwargs.values() if torch.is_tensor(v) and v.dim() > 0), None)
    if found is None:
        raise ValueError(
            "BADIT routing: the model call has no input tensor (input_ids, inputs_embeds or other)"
        )
    return found


def _expand_names(names: list[str] | None, batch: int, generating: bool) -> list[str] | None:
    """`names` (one per input sequence) for a batch of `batch` rows: as they are in a forward, where a list
    of another length raises (PEFT LoRA's message); repeated during `generate`, which repeats each prompt
    for its beams / samples (batch a multiple of len(names))."""
    if names is None or len(names) == batch:
        return names
    if not generating or batch % len(names) != 0:
        raise ValueError(
            "Length of `adapter_names` should be the same as the number of inputs, but got "
            f"{len(names)} and {batch} respectively."
        )
    return [name for name in names for _ in range(batch // len(names))]
