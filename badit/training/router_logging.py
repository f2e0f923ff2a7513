"""Router health during training: a Trainer callback that logs it, and the warning `badit train` prints.

At every logging step the callback reads the routing weights of the step's last forward (the
training batch, `badit.get_routing_weights`), and

- adds ``router/entropy``, ``router/top_share``, ``router/deviation``, ``router/min_load`` (means
  over layers, the smallest load of any expert) to the Trainer's log record (TensorBoard, JSONL);
- appends one line to its log file (a run's ``logs/router_health.jsonl``): ``{"step", "epoch", "layers": {layer: load per
  expert, entropy, top_share, deviation}, "summary": {...}}`` (read by `badit report`).

The statistics and thresholds are in `badit.analysis.router_health`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import TrainerCallback

from badit.analysis.router_health import model_health, routing_problem, summarize_health
from badit.data.files import append_line


class RouterHealthCallback(TrainerCallback):
    """Logs router health at the Trainer's logging steps (see the module docstring)."""

    def __init__(
        self, log_file: str | Path | None = None, log_fn: Callable[[dict[str, float]], None] | None = None
    ):
        self.log_file = Path(log_file) if log_file else None
        self.log_fn = log_fn
        self.last: dict[str, dict] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        due = step == 1 or (args.logging_steps and step % args.logging_steps == 0) or step == state.max_steps
        if model is None or not due:
            return
        from badit import get_routing_weights  # the adapter package, loaded with the model

        layers = model_health(get_routing_weights(model))
        if not layers:
            return
        self.last = layers
        summary = summarize_health(layers)
        if self.log_fn is not None:
            self.log_fn({f"router/{key}": value for key, value in summary.items()})
        if self.log_file is not None and state.is_world_process_zero:
            record = {"step": step, "epoch": state.epoch, "layers": layers, "summary": summary}
            append_line(self.log_file, json.dumps(record))


def router_warning(run_dir: str | Path, log_files: Sequence[Path]) -> str | None:
    """One line when the router of a finished run collapsed or never left uniform, else None.

    Reads the last record of each of the run's router logs (``log_files``, one per trained adapter: the
    multitask one, each single-task or continual stage, each ``STAGE/logs/FILE``) and names the adapters
    concerned.
    """
    run_dir = Path(run_dir)
    problems, log_name = [], None
    for path in log_files:
        log_name = path.relative_to(path.parent.parent)
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            continue
        try:
            layers = json.loads(lines[-1]).get("layers", {})
        except json.JSONDecodeError:
            continue  # a run killed mid-write; the report says more
        problem = routing_problem(layers)
        if problem:
            where = path.parent.parent.relative_to(run_dir)
            problems.append((str(where) if str(where) != "." else "the adapter", problem))
    if not problems:
        return None
    where, problem = problems[0]
    more = f" (and {len(problems) - 1} more adapter(s))" if len(problems) > 1 else ""
    return f"{problem} at the end of training [{where}{more}]; see {log_name} or `badit report {run_dir}`"
