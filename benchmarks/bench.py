"""What the speed benchmarks share (adapter_speed.py, method_speed.py, continual_speed.py): their common
options, a random-weight model of SmolLM2-135M's shapes, and interleaved timing of one step each.

Imported by the scripts as ``bench`` (``python benchmarks/X.py`` puts this folder first on sys.path).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Hashable, Mapping

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def parser(doc: str, batch: int) -> argparse.ArgumentParser:
    """A script's parser (``doc``, its module docstring, as the description) with ``--batch`` (default
    ``batch``), ``--seq`` and ``--repeats``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def smollm2_shaped(layers: int, tie_word_embeddings: bool = True) -> LlamaForCausalLM:
    """SmolLM2-135M's shapes (hidden 576, MLP 1536, 9 heads / 3 KV heads), ``layers`` decoder layers,
    random weights (no download). SmolLM2 ties its embeddings; continual_speed.py has always measured
    untied ones (a second 49152 x 576 matrix, frozen), hence the switch."""
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings,
    )
    return LlamaForCausalLM(config)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], object], device: str) -> float:
    """Seconds that ``step()`` takes on ``device`` (CUDA: synchronised before and after)."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(
    steps: Mapping[Hashable, Callable[[], float]], repeats: int
) -> dict[Hashable, list[float]]:
    """Each step's seconds over ``repeats`` rounds; each step returns its own time. The steps run
    interleaved, one of each per round, so that machine load affects all alike; round 0 warms up and is
    not kept."""
    times = {key: [] for key in steps}
    for i in range(repeats + 1):
        for key, step in steps.items():
            elapsed = step()
            if i > 0:
                times[key].append(elapsed)
    return times
