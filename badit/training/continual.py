"""Continual methods built on PEFT's LoRA: O-LoRA, InfLoRA and GainLoRA (docs/method.md, "Continual
baselines").

All three learn one LoRA branch of rank R per task and keep the earlier tasks' branches frozen. badit
stores the branches as ONE PEFT LoRA adapter of rank ``t * R`` (t: tasks learned so far): branch i is
rows ``i*R:(i+1)*R`` of each layer's ``lora_A`` and the same columns of ``lora_B``, and the forward
pass is LoRA's own, ``sum_i B_i A_i x`` (a concatenation is exactly a sum of branches). So the saved
folder of an O-LoRA or InfLoRA stage is a plain PEFT LoRA adapter that ``PeftModel.from_pretrained``
loads and evaluates as it was trained; next to it, ``continual.json`` (branch rank and count) and
``continual.safetensors`` (InfLoRA's input subspaces) carry what the next stage needs. The public codes
keep the same layout (O-LoRA's ``lora_A`` holds the earlier tasks' A rows, ``loranew_A`` the new ones).

A stage (`build_continual_model`) loads the previous stage's adapter, grows the rank by R and copies the
old branches in; the old rows/columns are frozen by gradient hooks (and put back after each optimizer
step, so that weight decay cannot move them either). `ContinualCallback` adds what each method does
during the stage:

- O-LoRA (Wang et al., 2023, arXiv 2310.14152): the loss term ``lambda_1 * sum_layers |A_old A_new^T|_1
  + lambda_2 * sum_layers (|A_new|_2 + |B_new|_2)`` (`olora_penalty`);
- InfLoRA (Liang & Li, CVPR 2024, arXiv 2404.00228): before training, the new branch's A is set from
  the new task's layer inputs projected out of the earlier tasks' input subspace (`design_branch`) and
  only B is trained; after training, the subspace is extended with this task's inputs by GPM's energy
  criterion (`extend_basis`), so the next branch leaves this task's layer outputs unchanged;
- GainLoRA (Liang & Li, 2025, arXiv 2505.15424): O-LoRA's or InfLoRA's branches (``method.gainlora_base``),
  each multiplied per sequence by its task's gate (`GainLoraGates`); a new task's gate is set up and
  its updates projected so that it gives ~0 on the earlier tasks' inputs.

Written here because no library provides these methods: PEFT has LoRA (used as is) but no continual
branches, subspaces or penalties.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from badit.adapter.integrity import check_adapter_folder
from badit.training.methods import CONTINUAL_METHODS, MethodConfig, baseline_alpha, build_peft_config
from badit.training.trainer import build_adapter_model

INFO_FILE = "continual.json"
"""In a continual adapter folder: method, branch rank, number of branches."""
STATE_FILE = "continual.safetensors"
"""In a continual adapter folder: InfLoRA's per-layer bases of the earlier tasks' inputs; GainLoRA's
gates (every task's) and the bases of the earlier tasks' gate features."""
GATE_CHECKPOINT_FILE = "gainlora_gate.safetensors"
"""In a Trainer checkpoint of a GainLoRA stage: the current gate."""
ADAPTER = "default"
INFLORA_A_SCALE = 1 / math.sqrt(3)
"""InfLoRA's A rows are orthonormal directions divided by sqrt(3) (the GainLoRA code's InfLoRA,
``lora_A /= sqrt(chunk * 3)`` with one chunk)."""


def branch_rank(method: MethodConfig) -> int:
    """R, the rank of each task's branch: K*r, the rank of the ``lora`` baseline."""
    return method.num_experts * method.r


def uses_subspaces(method: MethodConfig) -> bool:
    """Whether the new branch's A is designed from input subspaces (InfLoRA, GainLoRA on InfLoRA)."""
    return method.name == "inflora" or (method.name == "gainlora" and method.gainlora_base == "inflora")


def uses_orthogonality(method: MethodConfig) -> bool:
    """Whether the O-LoRA penalty is in the loss (O-LoRA, GainLoRA on O-LoRA)."""
    return method.name == "o-lora" or (method.name == "gainlora" and method.gainlora_base == "o-lora")


@dataclass
class ContinualState:
    """What a continual stage keeps across stages (saved next to the adapter)."""

    method: str
    rank: int
    """R, per branch."""
    branches: int
    """Branches in the adapter, the one being trained included."""
    bases: dict[str, torch.Tensor] = field(default_factory=dict)
    """Layer name -> (in_features, k) orthonormal basis of the inputs the earlier tasks gave that layer."""
    frozen: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    """Layer name -> copies of the old branches' (A rows, B columns), put back after each step."""
    gates: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """GainLoRA: ``w1`` (T, h, d), ``w2`` (T, d, h), ``keys`` (T, d) of the gates of the tasks saved, and
    ``basis0/1/2``: bases of the saved tasks' gate inputs (d), hidden features (h) and outputs (d)."""

    gate_module: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    """GainLoRA: the model's gates (`GainLoraGates`), saved with the state."""

    @property
    def old(self) -> int:
        """Rank taken by the earlier tasks' branches."""
        return (self.branches - 1) * self.rank

    def save(self, folder: Path) -> None:
        info = {"method": self.method, "branch_rank": self.rank, "branches": self.branches}
        (Path(folder) / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        tensors = {f"basis.{name}": b.contiguous().cpu() for name, b in self.bases.items()}
        gates = dict(self.gates)
        if self.gate_module is not None:  # every task's gate as it is now (the current one included)
            gates.update(self.gate_module.tensors())
        tensors |= {f"gate.{name}": t.detach().contiguous().cpu() for name, t in gates.items()}
        save_file(tensors, Path(folder) / STATE_FILE)

    @classmethod
    def load(cls, folder: Path) -> ContinualState:
        folder = Path(folder)
        if not (folder / INFO_FILE).is_file():
            raise ValueError(
                f"{folder} is not the adapter of a continual method (no {INFO_FILE}); start the continual "
                "run from its first stage"
            )
        info = json.loads((folder / INFO_FILE).read_text())
        tensors = load_file(folder / STATE_FILE) if (folder / STATE_FILE).is_file() else {}
        bases = {k.removeprefix("basis."): v for k, v in tensors.items() if k.startswith("basis.")}
        gates = {k.removeprefix("gate."): v for k, v in tensors.items() if k.startswith("gate.")}
        state = cls(method=info["method"], rank=info["branch_rank"], branches=info["branches"], bases=bases)
        state.gates = gates
        return state


def lora_layers(model) -> list[tuple[str, LoraLayer]]:
    """(name, layer) of every LoRA layer that holds the adapter, in module order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A
    ]


def factors(layer: LoraLayer) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """(A, B) of ``layer``: (t*R, in_features), (out_features, t*R)."""
    return layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight


# ----------------------------------------------------------------------------------------------
# A stage's model


def build_continual_model(
    base_model, method: MethodConfig, seed: int, init_adapter: str | Path | None = None
):
    """The base model with a LoRA adapter of one more branch than ``init_adapter`` (or one branch).

    The earlier branches are copied from ``init_adapter`` and frozen; the new one starts as PEFT
    initialises LoRA (A: Kaiming-uniform, B: 0), so the model starts equal to the previous stage's.
    The state (`ContinualState`) is ``model.continual_state``; `badit.training.trainer.save_adapter`
    saves it with the adapter.
    """
    rank = branch_rank(method)
    name = f"gainlora/{method.gainlora_base}" if method.name == "gainlora" else method.name
    previous, state = None, ContinualState(method=name, rank=rank, branches=1)
    if init_adapter is not None:
        check_adapter_folder(init_adapter)
        previous_state = ContinualState.load(Path(init_adapter))
        if (previous_state.method, previous_state.rank) != (state.method, rank):
            raise ValueError(
                f"{init_adapter}: adapter of {previous_state.method} with branch rank {previous_state.rank}, "
                f"but this stage is {state.method} with branch rank {rank}"
            )
        previous = load_file(Path(init_adapter) / "adapter_model.safetensors")
        state = dataclasses.replace(previous_state, branches=previous_state.branches + 1)
    config = dataclasses.replace(
        build_peft_config(method), r=state.branches * rank, lora_alpha=baseline_alpha(method) * state.branches
    )
    model = build_adapter_model(base_model, config, seed)
    if previous is not None:
        _copy_branches(model, previous, state.old)
    freeze_old_branches(model, state, train_a=not uses_subspaces(method))
    model.continual_state = state
    if method.name == "gainlora":
        attach_gates(
            model, GainLoraGates.for_stage(state, model.get_input_embeddings().embedding_dim, method)
        )
    return model


def _copy_branches(model, previous: dict[str, torch.Tensor], old: int) -> None:
    """Put the saved adapter's A rows / B columns into the first ``old`` of the grown adapter's."""
    current = get_peft_model_state_dict(model)
    missing = sorted(set(current) - set(previous))
    if missing:
        raise ValueError(
            f"the previous stage's adapter has no {missing[0]} (another model or target_modules?)"
        )
    for key, value in current.items():
        saved = previous[key].to(value.dtype)
        if ".lora_A." in key:
            value[:old] = saved
        elif ".lora_B." in key:
            value[:, :old] = saved
    set_peft_model_state_dict(model, current)


def freeze_old_branches(model, state: ContinualState, train_a: bool = True) -> None:
    """Gradient hooks that zero the old branches' gradients (so that clipping and Adam see only the new
    branch), and copies of the old values for `restore_old_branches`. ``train_a=False`` (InfLoRA):
    no A is trained at all."""
    old = state.old
    for name, layer in lora_layers(model):
        a, b = factors(layer)
        if not train_a:
            a.requires_grad_(False)
        if old == 0:
            continue
        state.frozen[name] = (a.detach()[:old].clone(), b.detach()[:, :old].clone())
        if train_a:
            a.register_hook(lambda g, old=old: torch.cat([torch.zeros_like(g[:old]), g[old:]], dim=0))
        b.register_hook(lambda g, old=old: torch.cat([torch.zeros_like(g[:, :old]), g[:, old:]], dim=1))


@torch.no_grad()
def restore_old_branches(model, state: ContinualState) -> None:
    """Put the old branches' values back (weight decay moves parameters whose gradient is zero)."""
    for name, layer in lora_layers(model):
        if name in state.frozen:
            a, b = factors(layer)
            old_a, old_b = state.frozen[name]
            a[: state.old].copy_(old_a)
            b[:, : state.old].copy_(old_b)


# ----------------------------------------------------------------------------------------------
# O-LoRA


def orthogonality(old_a: torch.Tensor, new_a: torch.Tensor) -> torch.Tensor:
    """O-LoRA's ``|A_old A_new^T|_1``: the sum of |dot products| between old and new A rows.

    old_a: (n_old, in_features), new_a: (R, in_features) -> a scalar (0 when every new row is orthogonal
    to every old one).
    """
    return (old_a @ new_a.T).abs().sum()


def olora_penalty(model, state: ContinualState, lambda_1: float, lambda_2: float) -> torch.Tensor:
    """``lambda_1 * sum_layers |A_old A_new^T|_1 + lambda_2 * sum_layers (|A_new|_F + |B_new|_F)``, O-LoRA's
    loss term (the public code's ``orthogonal_loss`` and ``bias_loss``, per layer)."""
    old, total = state.old, None
    for _, layer in lora_layers(model):
        a, b = factors(layer)
        term = a.new_zeros(())
        if old and lambda_1:
            term = term + lambda_1 * orthogonality(a[:old], a[old:])
        if lambda_2:
            term = term + lambda_2 * (a[old:].norm() + b[:, old:].norm())
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


# ----------------------------------------------------------------------------------------------
# InfLoRA: input subspaces


@torch.no_grad()
def input_covariances(model, batches: Iterable[dict], layer_names: Sequence[str] | None = None) -> dict:
    """Layer name -> (in_features, in_features) mean of ``x x^T`` over the non-padding tokens' inputs ``x``
    of that LoRA layer (float32), over ``batches`` (dicts with input_ids and attention_mask); eval mode."""
    layers = [(n, m) for n, m in lora_layers(model) if layer_names is None or n in layer_names]
    sums = {name: None for name, _ in layers}
    mask: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            rows = args[0][mask["valid"]].float()  # (tokens, in_features), padding left out
            product = rows.T @ rows
            sums[name] = product if sums[name] is None else sums[name] + product

        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers]
    was_training, count = model.training, 0
    model.eval()
    try:
        device = next(p for p in model.parameters()).device
        for batch in batches:
            input_ids = batch["input_ids"].to(device)
            attention_mask = batch["attention_mask"].to(device)
            mask["valid"] = attention_mask.bool()
            extra = {}
            if (
                hasattr(model, "continual_gates") and "labels" in batch
            ):  # gates pool the prompt, as in training
                extra["prompt_mask"] = batch["labels"].to(device) == -100
            model(input_ids=input_ids, attention_mask=attention_mask, **extra)
            count += int(attention_mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("no tokens to measure the layer inputs on")
    return {name: total / count for name, total in sums.items()}


def _spectrum(matrix: torch.Tensor, energy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(directions as columns, energies), largest first, of a covariance-like matrix.

    ``paper``: eigenvectors of the symmetric matrix, energies its eigenvalues (= squared singular values
    of the representation matrix, GPM's criterion). ``code``: left singular vectors of the (possibly
    one-sided projected) matrix, energies its squared singular values, as the InfLoRA/GainLoRA code does.
    """
    matrix = matrix.double()
    if energy == "paper":
        values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
        return vectors.flip(-1), values.flip(-1).clamp(min=0)
    u, s, _ = torch.linalg.svd(matrix)
    return u, s**2


def _complement(basis: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``I - M M^T`` (the projector onto the orthogonal complement of the basis' span), float64."""
    eye = torch.eye(dim, dtype=torch.float64)
    return eye if basis is None else eye - basis.double() @ basis.double().T


def design_branch(
    covariance: torch.Tensor, basis: torch.Tensor | None, rank: int, energy: str
) -> torch.Tensor:
    """InfLoRA's new A: (rank, in_features), the top directions of the new task's inputs outside the
    earlier tasks' subspace, scaled by `INFLORA_A_SCALE`; every row is orthogonal to ``basis``.

    covariance: (d, d) of the new task's layer inputs; basis: (d, k) orthonormal or None (first task).
    ``paper``: eigenvectors of ``Q C Q`` (Q = I - M M^T); ``code``: left singular vectors of ``Q C``.
    The chosen directions are projected by Q once more, so that a complement of dimension < rank gives
    zero rows rather than rows inside the old subspace.
    """
    q = _complement(basis, covariance.shape[0])
    c = covariance.double()
    projected = q @ c @ q if energy == "paper" else q @ c
    vectors, _ = _spectrum(projected, energy)
    rows = (q @ vectors[:, :rank]).T
    return (rows * INFLORA_A_SCALE).to(covariance.dtype)


def extend_basis(
    basis: torch.Tensor | None, covariance: torch.Tensor, threshold: float, energy: str
) -> torch.Tensor:
    """GPM's update (Saha et al., 2021; InfLoRA's DualGPM without the dual form): add to ``basis`` the
    fewest top directions of the new task's inputs outside it that bring the captured share of the new
    task's input energy to ``threshold``. Returns (d, k') with k' >= k (at least 1 column on the first
    task; at most d).
    """
    d = covariance.shape[0]
    c = covariance.double()
    if basis is None:
        vectors, energies = _spectrum(c, energy)
        share = torch.cumsum(energies, 0) / energies.sum().clamp(min=1e-300)
        # GPM: the fewest directions whose share reaches the threshold (the one that crosses it included);
        # the InfLoRA/GainLoRA code stops one short of it (its "+1" is commented out): ``code`` keeps that.
        k = int((share < threshold).sum()) + (1 if energy == "paper" else 0)
        return vectors[:, : min(max(k, 1), d)].to(covariance.dtype)
    total = _spectrum(c, energy)[1].sum().clamp(min=1e-300)
    q = _complement(basis, d)
    vectors, energies = _spectrum(q @ c @ q if energy == "paper" else q @ c, energy)
    captured = (total - energies.sum()) / total  # share already inside the old subspace
    before = captured + (torch.cumsum(energies, 0) - energies) / total
    k = int((before < threshold).sum())
    if k == 0:
        return basis
    new = q @ vectors[:, :k]
    new = torch.linalg.qr(new)[0]  # orthonormal again after the projection (rounding)
    return torch.cat([basis.double(), new], dim=1)[:, :d].to(basis.dtype)


def set_new_branch(model, state: ContinualState, covariances: dict, energy: str) -> None:
    """InfLoRA: the new branch's A rows of every layer from `design_branch`."""
    with torch.no_grad():
        for name, layer in lora_layers(model):
            a, _ = factors(layer)
            rows = design_branch(covariances[name].cpu(), state.bases.get(name), state.rank, energy)
            a[state.old :].copy_(rows.to(a.device, a.dtype))


def extend_bases(state: ContinualState, covariances: dict, threshold: float, energy: str) -> None:
    """InfLoRA: every layer's basis extended with this task's inputs (`extend_basis`)."""
    for name, covariance in covariances.items():
        state.bases[name] = extend_basis(state.bases.get(name), covariance.cpu(), threshold, energy)


# ----------------------------------------------------------------------------------------------
# GainLoRA: gates


class GainLoraGates(torch.nn.Module):
    """Every task's gate; task i's coefficient for an input sequence with pooled embedding x is

        a_i(x) = |2 sigmoid(4 cos(g_i(x), k_i)) - 1|,   g_i(x) = SiLU(W2_i SiLU(W1_i x))

    (GainLoRA's code: no biases, factor 4, |.| so that cos = 0 gives 0). The earlier tasks' W1, W2, k
    are frozen buffers; the current task's are parameters. Shapes: W1 (h, d), W2 (d, h), k (d); the
    coefficients of a batch are computed for all tasks at once (one einsum per layer of the gate).
    """

    def __init__(self, dim: int, hidden: int, old: dict[str, torch.Tensor] | None = None):
        super().__init__()
        old = old or {}
        self.register_buffer("old_w1", old.get("w1", torch.zeros(0, hidden, dim)))
        self.register_buffer("old_w2", old.get("w2", torch.zeros(0, dim, hidden)))
        self.register_buffer("old_keys", old.get("keys", torch.zeros(0, dim)))
        if len(self.old_w1):  # the new gate starts as the last one (GainLoRA's code loads it)
            w1, w2 = self.old_w1[-1].clone(), self.old_w2[-1].clone()
        else:  # nn.Linear's init, as the code's first gate
            w1, w2 = (
                torch.nn.Linear(dim, hidden, bias=False).weight,
                torch.nn.Linear(hidden, dim, bias=False).weight,
            )
        self.w1 = torch.nn.Parameter(w1.detach().clone())
        self.w2 = torch.nn.Parameter(w2.detach().clone())
        self.key = torch.nn.Parameter(
            torch.empty(dim).uniform_(-1, 1)
        )  # its direction is set on the task's data
        self.coefficients: torch.Tensor | None = None
        """(batch, tasks) of the current forward (kept for the cached decoding steps)."""

    @classmethod
    def for_stage(cls, state: ContinualState, dim: int, method: MethodConfig) -> GainLoraGates:
        return cls(
            dim, method.gate_hidden, {k: state.gates[k] for k in ("w1", "w2", "keys") if k in state.gates}
        )

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W1 (T, h, d), W2 (T, d, h), keys (T, d)): the earlier tasks' then the current one's."""
        return (
            torch.cat([self.old_w1, self.w1[None]]),
            torch.cat([self.old_w2, self.w2[None]]),
            torch.cat([self.old_keys, self.key[None]]),
        )

    def features(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The current gate's hidden features (b, h) and output (b, d) for pooled inputs (b, d)."""
        hidden = torch.nn.functional.silu(pooled @ self.w1.T)
        return hidden, torch.nn.functional.silu(hidden @ self.w2.T)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(b, d) pooled input embeddings -> (b, T) coefficients in [0, 1)."""
        w1, w2, keys = self.stacked()
        hidden = torch.nn.functional.silu(torch.einsum("bd,thd->bth", pooled, w1))
        out = torch.nn.functional.silu(torch.einsum("bth,tdh->btd", hidden, w2))
        cos = torch.nn.functional.cosine_similarity(out, keys[None], dim=-1)  # 0 for a zero output
        return (2 * torch.sigmoid(4 * cos) - 1).abs()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The gates of all tasks so far, as saved (`ContinualState.gates`)."""
        w1, w2, keys = self.stacked()
        return {"w1": w1.detach(), "w2": w2.detach(), "keys": keys.detach()}


def pooled_prompt(embeddings: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Mean of the prompt tokens' embeddings: (b, s, d), (b, s) bool -> (b, d) (0 for an empty prompt)."""
    weights = prompt.to(embeddings.dtype).unsqueeze(-1)
    return (embeddings * weights).sum(1) / weights.sum(1).clamp(min=1)


def _prompt_mask(kwargs: dict, tokens: torch.Tensor) -> torch.Tensor:
    """The tokens a gate pools: ``prompt_mask`` (popped), else attended tokens whose label is -100 when
    labels are given, else every attended token (generation's prefill: the prompt)."""
    prompt = kwargs.pop("prompt_mask", None)
    batch, length = tokens.shape[:2]
    attention = kwargs.get("attention_mask")
    if attention is None or attention.dim() != 2:
        attention = torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
    attention = attention[:, -length:].bool()
    if prompt is None and kwargs.get("labels") is not None:
        prompt = kwargs["labels"] == -100
    return attention if prompt is None else attention & prompt.bool()


def attach_gates(model, gates: GainLoraGates) -> None:
    """Make ``model`` (a PEFT LoRA model) gated: a pre-hook on the transformers model computes the
    coefficients of each call from its prompt (reused on cached decoding steps, as BADIT's routing is),
    and a pre-hook on each layer's ``lora_B`` multiplies branch i's R components by a_i.

    The gates are ``model.continual_gates`` (a submodule: the Trainer trains the current gate).
    """
    model.continual_gates = gates
    model.continual_state.gate_module = gates
    rank = model.continual_state.rank
    embed = model.get_input_embeddings()

    def capture(module, args, kwargs):
        tokens = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        cached = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        prompt = _prompt_mask(kwargs, tokens if tokens is not None else kwargs["inputs_embeds"])
        if cached and gates.coefficients is not None:
            return args, kwargs
        with torch.no_grad():
            embeddings = embed(tokens) if tokens is not None else kwargs["inputs_embeds"]
        gates.coefficients = gates(pooled_prompt(embeddings.float(), prompt))
        return args, kwargs

    def scale(module, args):
        per_component = gates.coefficients.repeat_interleave(rank, dim=1)  # (b, t*R)
        return (args[0] * per_component[:, None, :].to(args[0].dtype),)

    model.base_model.model.register_forward_pre_hook(capture, with_kwargs=True)
    for _, layer in lora_layers(model):
        layer.lora_B[ADAPTER].register_forward_pre_hook(scale)


@torch.no_grad()
def gate_features(model, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled inputs (n, d), current gate's hidden features (n, h), outputs (n, d)) over ``batches``'
    sequences, pooled on their prompt tokens as in training."""
    gates, embed = model.continual_gates, model.get_input_embeddings()
    device = next(p for p in model.parameters()).device
    pooled = []
    for batch in batches:
        ids = batch["input_ids"].to(device)
        prompt = batch["attention_mask"].to(device).bool()
        if "labels" in batch:
            prompt &= batch["labels"].to(device) == -100
        pooled.append(pooled_prompt(embed(ids).float(), prompt))
    x = torch.cat(pooled)
    hidden, out = gates.features(x)
    return x, hidden, out


def _covariance(rows: torch.Tensor) -> torch.Tensor:
    return rows.T.double() @ rows.double() / max(len(rows), 1)


def set_gate_key(model, batches: Iterable[dict], energy: str) -> None:
    """The new gate's key: the top direction of its outputs on the new task outside the earlier tasks'
    gate outputs (so cos with those is ~0), at the norm of its random init (GainLoRA's code)."""
    gates, state = model.continual_gates, model.continual_state
    _, _, out = gate_features(model, batches)
    direction = design_branch(_covariance(out), state.gates.get("basis2"), 1, energy)[0]
    direction = direction / direction.norm().clamp(min=1e-12)
    with torch.no_grad():
        gates.key.copy_((direction * gates.key.norm()).to(gates.key.dtype))


def extend_gate_bases(model, batches: Iterable[dict], threshold: float, energy: str) -> None:
    """After a task: its gate inputs, hidden features and outputs join the bases the next gate's
    updates are kept out of, and the gates of all tasks so far go to the state (saved)."""
    gates, state = model.continual_gates, model.continual_state
    for i, rows in enumerate(gate_features(model, batches)):
        state.gates[f"basis{i}"] = extend_basis(
            state.gates.get(f"basis{i}"), _covariance(rows).float(), threshold, energy
        )
    state.gates.update(gates.tensors())


@torch.no_grad()
def project_gate_update(
    gates: GainLoraGates, before: dict[str, torch.Tensor], bases: dict, renormalise: bool
) -> None:
    """GainLoRA's constraint on the new gate: its optimizer step minus the step's part inside the
    earlier tasks' subspaces (W1's rows against the pooled inputs' basis, W2's rows against the hidden
    features', the key against the outputs'), so the earlier tasks' gate features do not move.
    ``renormalise`` (GainLoRA's code): then scale each row back to the norm the plain step gave it
    (this makes the constraint inexact; off by default)."""
    for name, basis_name in (("w1", "basis0"), ("w2", "basis1"), ("key", "basis2")):
        basis = bases.get(basis_name)
        if basis is None:
            continue
        param = getattr(gates, name)
        m = basis.to(param.device, param.dtype)
        step = param - before[name]
        kept = before[name] + step - (step @ m) @ m.T
        if renormalise:
            kept = kept * param.norm(dim=-1, keepdim=True) / kept.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        param.copy_(kept)


# ----------------------------------------------------------------------------------------------
# In the Trainer


class ContinualCallback(TrainerCallback):
    """A continual stage's work inside ``Trainer.train``: InfLoRA's branch design before the first step
    and subspace update after the last, the frozen branches put back after each step, and O-LoRA's
    loss term (`loss_term`, added by ``BaditTrainer.compute_loss``).

    ``examples`` (the stage's tokenised training examples) are read in file order by their own loader,
    so measuring the subspaces draws nothing from the training sampler's random state.
    """

    resume_from: str | None = None
    """The checkpoint training resumes from (set by ``train_stage``): the current gate is read from it."""

    def __init__(self, model, method: MethodConfig, examples: Sequence[dict], collator, batch_size: int):
        self.state: ContinualState = model.continual_state
        self._gate_before: dict[str, torch.Tensor] = {}
        self.method = method
        limit = method.subspace_examples
        self.examples = list(examples)[:limit] if limit else list(examples)
        self.collator = collator
        self.batch_size = batch_size

    def _batches(self):
        return DataLoader(self.examples, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator)

    def loss_term(self, model) -> torch.Tensor | None:
        m = self.method
        if not uses_orthogonality(m) or (m.orthogonality_weight == 0 and m.l2_weight == 0):
            return None
        return olora_penalty(model, self.state, m.orthogonality_weight, m.l2_weight)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        gated = hasattr(model, "continual_gates")
        if gated and self.resume_from and (Path(self.resume_from) / GATE_CHECKPOINT_FILE).is_file():
            saved = load_file(Path(self.resume_from) / GATE_CHECKPOINT_FILE)
            with torch.no_grad():
                for name, value in saved.items():
                    getattr(model.continual_gates, name).copy_(value)
        if gated and state.global_step == 0:
            set_gate_key(model, self._batches(), self.method.subspace_energy)
        if uses_subspaces(self.method):
            for _, layer in lora_layers(model):  # a resumed checkpoint's load may have made A trainable
                factors(layer)[0].requires_grad_(False)
            if state.global_step == 0:  # resumed: the designed A is in the checkpoint
                covariances = input_covariances(model, self._batches())
                set_new_branch(model, self.state, covariances, self.method.subspace_energy)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if hasattr(model, "continual_gates") and "basis0" in self.state.gates:
            gates = model.continual_gates
            self._gate_before = {n: getattr(gates, n).detach().clone() for n in ("w1", "w2", "key")}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._gate_before:
            project_gate_update(
                model.continual_gates, self._gate_before, self.state.gates, self.method.gate_renormalise
            )
            self._gate_before = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        restore_old_branches(model, self.state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        m = self.method
        if uses_subspaces(m):
            covariances = input_covariances(model, self._batches())
            extend_bases(self.state, covariances, m.subspace_threshold, m.subspace_energy)
        if hasattr(model, "continual_gates"):
            extend_gate_bases(model, self._batches(), m.subspace_threshold, m.subspace_energy)

    def save_checkpoint_state(self, folder, args, state, model) -> None:
        """The current gate into a Trainer checkpoint (PEFT saves only the LoRA weights)."""
        if hasattr(model, "continual_gates") and args.should_save:
            gates = model.continual_gates
            tensors = {n: getattr(gates, n).detach().contiguous().cpu() for n in ("w1", "w2", "key")}
            save_file(tensors, Path(folder) / GATE_CHECKPOINT_FILE)


def is_continual(method: MethodConfig) -> bool:
    return method.name in CONTINUAL_METHODS


def load_continual_adapter(base_model, folder: str | Path, is_trainable: bool = False):
    """A saved continual adapter as it was trained (evaluation, analysis): PEFT's LoRA (all branches),
    plus every task's gate for GainLoRA (whose folder alone, loaded by PEFT, would sum the branches
    ungated)."""
    from peft import PeftModel

    folder = Path(folder)
    state = ContinualState.load(folder)
    model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=is_trainable)
    model.continual_state = state
    if state.method.startswith("gainlora"):
        w1, w2, keys = state.gates["w1"], state.gates["w2"], state.gates["keys"]
        gates = GainLoraGates(w1.shape[2], w1.shape[1], {"w1": w1[:-1], "w2": w2[:-1], "keys": keys[:-1]})
        with torch.no_grad():
            gates.w1.copy_(w1[-1])
            gates.w2.copy_(w2[-1])
            gates.key.copy_(keys[-1])
        attach_gates(model, gates.to(next(model.parameters()).device))
    return model


def is_continual_folder(folder: str | Path) -> bool:
    return (Path(folder) / INFO_FILE).is_file()
