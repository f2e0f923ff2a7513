"""Balanced spherical k-means, cluster-to-expert matching and the regroup schedule, on synthetic data."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from badit.regrouping import plan_regroup, regroup_due
from badit.regrouping.kmeans import balanced_assignment
from badit.regrouping.matching import match_clusters_to_experts, permutation_from_targets

K, R, DIM = 6, 4, 2112  # SmolLM2 gate_proj: 576 + 1536 gradient entries per component


def planted_directions(groups: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Directions of len(groups) components: component j = center of groups[j] + isotropic noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((groups.max() + 1, DIM))
    return centers[groups] + noise * rng.standard_normal((len(groups), DIM))


def groups_of(perm: np.ndarray) -> set[frozenset[int]]:
    """The sets of original components that end up in each expert."""
    return {frozenset(perm[e * R : (e + 1) * R].tolist()) for e in range(K)}


def test_balanced_assignment_is_the_exact_optimum():
    rng = np.random.default_rng(0)
    n_clusters, size = 3, 2
    for _ in range(20):
        similarity = rng.standard_normal((n_clusters * size, n_clusters))
        labels = balanced_assignment(similarity, size)
        assert np.array_equal(np.bincount(labels, minlength=n_clusters), [size] * n_clusters)
        # Brute force over every balanced labelling (90 of them).
        best = max(
            similarity[np.arange(6), list(lab)].sum()
            for lab in set(itertools.permutations([0, 0, 1, 1, 2, 2]))
        )
        assert similarity[np.arange(6), labels].sum() == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_planted_clusters_are_recovered_exactly(seed):
    rng = np.random.default_rng(100 + seed)
    planted = rng.permutation(np.repeat(np.arange(K), R))  # planted groups scattered over the experts
    directions = planted_directions(planted, noise=1.0, seed=seed)  # per-entry noise as large as signal
    plan = plan_regroup(directions, K, R)

    assert np.array_equal(np.sort(plan.perm), np.arange(K * R))  # a bijection
    assert groups_of(plan.perm) == {frozenset(np.flatnonzero(planted == g).tolist()) for g in range(K)}
    stats = plan.stats
    assert stats["inter_cosine"] < stats["inter_cosine_before"] - 0.1
    assert stats["intra_cosine"] > stats["intra_cosine_before"]
    assert stats["kmeans_objective"] == pytest.approx(K * R * (1 - stats["intra_cosine"]))
    # The matching keeps the largest possible overlap with the current experts.
    overlap = np.zeros((K, K), dtype=int)
    np.add.at(overlap, (planted, np.arange(K * R) // R), 1)
    mapping = match_clusters_to_experts(planted, np.arange(K * R) // R, K)
    assert stats["moved"] == K * R - overlap[np.arange(K), mapping].sum()


def test_current_grouping_already_optimal_moves_nothing():
    directions = planted_directions(np.repeat(np.arange(K), R), noise=0.5, seed=1)
    plan = plan_regroup(directions, K, R)
    assert np.array_equal(plan.perm, np.arange(K * R))
    assert plan.stats["moved"] == 0
    assert plan.stats["inter_cosine"] == pytest.approx(plan.stats["inter_cosine_before"])


def test_one_swap_moves_exactly_two_components_and_nothing_else():
    planted = np.repeat(np.arange(K), R)
    planted[[1, 9]] = planted[[9, 1]]  # component 1 belongs with expert 2, component 9 with expert 0
    plan = plan_regroup(planted_directions(planted, noise=0.5, seed=2), K, R)
    expected = np.arange(K * R)
    expected[[1, 9]] = [9, 1]
    assert np.array_equal(plan.perm, expected)
    assert plan.stats["moved"] == 2


def test_components_without_gradient_stay_in_their_expert():
    routed = np.r_[0:8, 12 : K * R]  # expert 2 (components 8..11) was never routed in the window
    planted = np.random.default_rng(3).permutation(np.repeat(np.arange(K - 1), R))
    directions = np.zeros((K * R, DIM))
    directions[routed] = planted_directions(planted, noise=0.5, seed=3)
    plan = plan_regroup(directions, K, R)
    assert plan.stats["moved"] > 0
    assert sorted(plan.perm[8:12]) == [8, 9, 10, 11]
    assert np.array_equal(np.sort(plan.perm), np.arange(K * R))


def test_permutation_from_targets_keeps_stayers_in_place():
    rng = np.random.default_rng(4)
    for _ in range(50):
        targets = rng.permutation(np.repeat(np.arange(K), R))
        perm = permutation_from_targets(targets, R)
        assert np.array_equal(np.sort(perm), np.arange(K * R))
        # The component now in slot j came from perm[j] and was destined to expert j // R.
        assert np.array_equal(targets[perm], np.arange(K * R) // R)
        stayers = np.flatnonzero(targets == np.arange(K * R) // R)
        assert np.array_equal(perm[stayers], stayers)
    with pytest.raises(ValueError, match="exactly"):
        permutation_from_targets(np.zeros(K * R, dtype=int), R)


@pytest.mark.parametrize(
    ("fields", "step", "total", "epoch_end", "due"),
    [
        ({}, 100, 400, True, True),  # default: each epoch end ...
        ({}, 200, 400, True, True),  # ... up to half of training
        ({}, 300, 400, True, False),
        ({}, 100, 400, False, False),  # not between epoch ends
        ({"regroup": False}, 100, 400, True, False),
        ({"regroup_every": 50}, 150, 400, False, True),
        ({"regroup_every": 50}, 149, 400, False, False),
        ({"regroup_every": 50}, 150, 400, True, False),  # step schedules ignore epoch ends
        ({"regroup_every": 50}, 250, 400, False, False),
        ({"regroup_every": 50, "regroup_until": None}, 250, 400, False, True),
        ({"regroup_until": 1.0}, 400, 400, True, False),  # never after the last step
        ({"regroup_until": 1.0}, 300, None, True, True),  # unknown length: no limit
    ],
)
def test_regroup_schedule(fields, step, total, epoch_end, due):
    config = SimpleNamespace(**{"regroup": True, "regroup_every": "epoch", "regroup_until": 0.5, **fields})
    assert regroup_due(config, step=step, total_steps=total, epoch_end=epoch_end) is due


@pytest.mark.parametrize("seed", range(3))
def test_sign_flips_change_neither_the_plan_nor_its_statistics(seed):
    """Negating any rows (components whose SVD sign is flipped) gives the same permutation and the same
    statistics under the default |cos| similarity: every cosine is negated exactly, so |cos| is equal."""
    rng = np.random.default_rng(200 + seed)
    planted = rng.permutation(np.repeat(np.arange(K), R))
    directions = planted_directions(planted, noise=1.0, seed=seed)
    signs = np.where(rng.random(K * R) < 0.5, -1.0, 1.0)
    plain, flipped = plan_regroup(directions, K, R), plan_regroup(directions * signs[:, None], K, R)
    assert np.array_equal(plain.perm, flipped.perm)
    assert flipped.stats == pytest.approx(plain.stats, abs=1e-12)
    # the planted groups, whatever the signs (a planted group holds +c and -c: one axis)
    mixed = plan_regroup(planted_directions(planted, noise=0.5, seed=seed) * signs[:, None], K, R)
    assert groups_of(mixed.perm) == {frozenset(np.flatnonzero(planted == g).tolist()) for g in range(K)}


def test_a_schedule_that_can_never_regroup_is_named_with_its_fix():
    """The README's own-tasks run: 30 steps, 21 per epoch, regroup at epoch ends until 0.5 of training:
    the first regroup would fall at step 21 > 15 = 0.5 * 30. Fixes: regroup every <= 15 steps, or
    max_steps >= 42 (21 <= 0.5 * 42), or regroup_until >= 0.7 (21 <= 0.7 * 30)."""
    from badit.regrouping import never_regroups

    readme = SimpleNamespace(regroup=True, regroup_every="epoch", regroup_until=0.5)
    problem = never_regroups(readme, total_steps=30, steps_per_epoch=21)
    assert problem.startswith(
        "this run never regroups: the first regroup would fall at the end of epoch 1, step 21"
    )
    assert "stops after step 15 (regroup_until 0.5 of 30 steps)" in problem
    assert "regroup_every=N with N <= 15 (e.g. 7) or max_steps >= 42 or regroup_until >= 0.7" in problem
    # what the fixes give, checked against regroup_due itself
    for config, total in ((SimpleNamespace(**{**vars(readme), "regroup_every": 7}), 30), (readme, 42)):
        due = [
            s
            for s in range(1, total + 1)
            if regroup_due(config, step=s, total_steps=total, epoch_end=s % 21 == 0)
        ]
        assert due and never_regroups(config, total_steps=total, steps_per_epoch=21) is None
    assert never_regroups(readme, total_steps=60, steps_per_epoch=21) is None  # step 21 <= 30
    # every N steps: N = 10 in 12 steps until 0.5 (last allowed step 6)
    steps = SimpleNamespace(regroup=True, regroup_every=10, regroup_until=0.5)
    assert "at step 10 (regroup_every=10)" in never_regroups(steps, total_steps=12, steps_per_epoch=12)
    # switched off by choice: no warning
    assert (
        never_regroups(
            SimpleNamespace(**{**vars(readme), "regroup": False}), total_steps=30, steps_per_epoch=21
        )
        is None
    )
    assert (
        never_regroups(
            SimpleNamespace(**{**vars(readme), "regroup_until": 0}), total_steps=30, steps_per_epoch=21
        )
        is None
    )


def test_regroup_callback_warns_before_the_first_step(caplog):
    from badit.training.callbacks import RegroupCallback

    config = SimpleNamespace(regroup=True, regroup_every="epoch", regroup_until=0.5)
    args = SimpleNamespace(gradient_accumulation_steps=2)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=30)
    with caplog.at_level("WARNING", logger="badit"):
        RegroupCallback(config).on_train_begin(
            args, state, None, train_dataloader=range(41)
        )  # ceil(41/2) = 21
    assert [r.getMessage() for r in caplog.records if "never regroups" in r.getMessage()] == [
        "BADIT: " + never_regroups_readme()
    ]


def never_regroups_readme() -> str:
    from badit.regrouping import never_regroups

    config = SimpleNamespace(regroup=True, regroup_every="epoch", regroup_until=0.5)
    return never_regroups(config, total_steps=30, steps_per_epoch=21)


def test_the_readme_own_tasks_example_regroups(tmp_path, monkeypatch):
    """The README's own-tasks command, on the data its block writes: its schedule regroups at least once
    (steps per epoch from the run's own training split and batch size)."""
    import math
    import shlex
    import subprocess
    import sys

    from badit.experiments.config import load_config
    from badit.experiments.stage import data_source, load_run_tasks, task_names
    from badit.regrouping import never_regroups
    from badit.training.methods import mixture_config
    from tests.helpers import REPO, doc_block

    block = doc_block("README.md", "## Train on your own tasks", "bash")
    script = block[block.index("<<'EOF'\n") + len("<<'EOF'\n") : block.index("\nEOF\n")]
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    command = block[block.index(".venv/bin/badit train") :].replace("\\\n", " ").split("#")[0]
    words = shlex.split(command)
    monkeypatch.chdir(REPO)
    config = load_config(words[2], [w.replace("mix.jsonl", str(tmp_path / "mix.jsonl")) for w in words[3:]])
    train, _ = load_run_tasks(config, task_names(config), data_source(config))
    steps_per_epoch = math.ceil(
        sum(len(t.instances) for t in train) / config.training.per_device_train_batch_size
    )
    method = mixture_config(config.method)
    assert (
        never_regroups(method, total_steps=config.training.max_steps, steps_per_epoch=steps_per_epoch) is None
    )
    readme_default = SimpleNamespace(regroup=True, regroup_every="epoch", regroup_until=0.5)
    assert never_regroups(readme_default, total_steps=30, steps_per_epoch=steps_per_epoch)  # without the fix
