"""Continual methods built on PEFT's LoRA: O-LoRA and InfLoRA (docs/method.md, "Continual baselines").

Both learn one LoRA branch of rank R per task and keep the earlier tasks' branches frozen. badit
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
  criterion (`extend_basis`), so the next branch leaves this task's layer outputs unchanged.

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
"""In a continual adapter folder: InfLoRA's per-layer bases of the earlier tasks' inputs."""
ADAPTER = "default"
INFLORA_A_SCALE = 1 / math.sqrt(3)
"""InfLoRA's A rows are orthonormal directions divided by sqrt(3) (the GainLoRA code's InfLoRA,
``lora_A /= sqrt(chunk * 3)`` with one chunk)."""


def branch_rank(method: MethodConfig) -> int:
    """R, the rank of each task's branch: K*r, the rank of the ``lora`` baseline."""
    return method.num_experts * method.r


def uses_subspaces(method: MethodConfig) -> bool:
    """Whether the new branch's A is designed from input subspaces (InfLoRA)."""
    return method.name == "inflora"


def uses_orthogonality(method: MethodConfig) -> bool:
    """Whether the O-LoRA penalty is in the loss (O-LoRA)."""
    return method.name == "o-lora"


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

    @property
    def old(self) -> int:
        """Rank taken by the earlier tasks' branches."""
        return (self.branches - 1) * self.rank

    def save(self, folder: Path) -> None:
        info = {"method": self.method, "branch_rank": self.rank, "branches": self.branches}
        (Path(folder) / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        save_file(
            {f"basis.{name}": b.contiguous().cpu() for name, b in self.bases.items()},
            Path(folder) / STATE_FILE,
        )

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
        return cls(method=info["method"], rank=info["branch_rank"], branches=info["branches"], bases=bases)


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
    previous, state = None, ContinualState(method=method.name, rank=rank, branches=1)
    if init_adapter is not None:
        check_adapter_folder(init_adapter)
        previous_state = ContinualState.load(Path(init_adapter))
        if previous_state.method != method.name or previous_state.rank != rank:
            raise ValueError(
                f"{init_adapter}: adapter of {previous_state.method} with branch rank {previous_state.rank}, "
                f"but this stage is {method.name} with branch rank {rank}"
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
            model(input_ids=input_ids, attention_mask=attention_mask)
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
# In the Trainer


class ContinualCallback(TrainerCallback):
    """A continual stage's work inside ``Trainer.train``: InfLoRA's branch design before the first step
    and subspace update after the last, the frozen branches put back after each step, and O-LoRA's
    loss term (`loss_term`, added by ``BaditTrainer.compute_loss``).

    ``examples`` (the stage's tokenised training examples) are read in file order by their own loader,
    so measuring the subspaces draws nothing from the training sampler's random state.
    """

    def __init__(self, model, method: MethodConfig, examples: Sequence[dict], collator, batch_size: int):
        self.state: ContinualState = model.continual_state
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
        if uses_subspaces(self.method):
            for _, layer in lora_layers(model):  # a resumed checkpoint's load may have made A trainable
                factors(layer)[0].requires_grad_(False)
            if state.global_step == 0:  # resumed: the designed A is in the checkpoint
                covariances = input_covariances(model, self._batches())
                set_new_branch(model, self.state, covariances, self.method.subspace_energy)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        restore_old_branches(model, self.state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if uses_subspaces(self.method):
            covariances = input_covariances(model, self._batches())
            extend_bases(self.state, covariances, self.method.subspace_threshold, self.method.subspace_energy)


def is_continual(method: MethodConfig) -> bool:
    return method.name in CONTINUAL_METHODS
