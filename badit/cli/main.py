"""The ``badit`` command: train, eval, compare, report, analyze, data check / fetch, configs, demo, export,
merge, sweep.

Until a command needs them, torch, transformers and PEFT are not imported (only the standard library and
badit's light modules: names, errors, the config and data readers), so that ``badit --help`` answers at
once and a config error of ``badit train`` shows in well under a second. Errors the user can fix are
``badit.errors.BaditError``s (or OS / safetensors errors worded by ``badit.errors.user_error_message``):
one line, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import sys
import warnings
from pathlib import Path

from badit import __version__
from badit.errors import one_line, printable, user_error_message

EPILOG_TRAIN = """\
examples:
  badit train configs/superni_multitask.yaml
  badit train configs/superni_multitask.yaml method.name=lora training.learning_rate=1e-4 output_dir=runs/lora
  badit train configs/superni_multitask.yaml setting=single output_dir=runs/badit-single
  badit train runs/lora --resume            # continue a killed run from its last checkpoint

Methods (method.name): badit; svd-moe (no regrouping); loramoe (random experts: the LoRAMoE variant
of the BADIT code, per-sequence dense routing without balancing loss, not Dou et al.'s token-level
LoRAMoE); lora, pissa, olora (PEFT LoRA of rank K*r, alpha matched to BADIT's per-component scale);
hydralora (one shared A, K routed B's); setting continual only: o-lora, inflora, gainlora.

Any field of the config can be overridden as section.field=value (values are YAML: 3, 1e-4, true,
[a, b], null). Multi-GPU: `accelerate launch -m badit.cli.main train CONFIG` or
`torchrun --nproc-per-node N -m badit.cli.main train CONFIG`; DeepSpeed ZeRO-2 with
training.deepspeed=ds_config.json.
"""

EPILOG_EVAL = """\
examples:
  badit eval runs/lora                                   # re-evaluate with the run's settings
  badit eval runs/lora evaluation.max_examples_per_task=null evaluation.batch_size=64
  badit eval runs/lora evaluation.split=dev --output runs/lora/eval-dev
"""

EPILOG_COMPARE = """\
The interference score of a multi-task run is its average minus the average of a single-task run
(setting=single: one adapter per task) over the same tasks; negative means interference. Give the
single-task run(s) among RUN... to get it.

example:
  badit compare runs/lora runs/badit runs/badit-single
"""

EPILOG_SWEEP = """\
example:
  badit sweep configs/sweeps/smollm2_cpu.yaml --output /tmp/sweep
"""


def _size(text: str) -> int | float:
    """A split size: a count (`20`) or a fraction (`0.1`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def add_signature_options(
    parser: argparse.ArgumentParser,
    function,
    helps: dict[str, str],
    flags: dict[str, str] | None = None,
    metavars: dict[str, str] | None = None,
) -> None:
    """One option per parameter of ``function`` named in ``helps``, its name, default and type read from
    the signature, so that the command and the function cannot disagree. ``flags`` renames an option
    (``{"output_dir": "--output"}``), ``metavars`` names its value in the help.
    A True default becomes ``--no-NAME``, a False one ``--NAME``, a tuple ``nargs="+"``."""
    flags, metavars = flags or {}, metavars or {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name not in helps:
            continue
        default, dashed = parameter.default, name.replace("_", "-")
        option: dict = {"dest": name, "help": helps[name]}
        if isinstance(default, bool):
            dashed = f"no-{dashed}" if default else dashed
            option["action"] = "store_false" if default else "store_true"
        else:
            shown = ", ".join(default) if isinstance(default, tuple) else default
            option["help"] += f" (default {shown})" if default is not None else ""
            option["default"] = list(default) if isinstance(default, tuple) else default
            option["metavar"] = metavars.get(name, name.upper())
            if isinstance(default, tuple):
                option["nargs"] = "+"
            elif default is not None:
                option["type"] = type(default)
        parser.add_argument(flags.get(name, f"--{dashed}"), **option)


def call_with_options(function, args: argparse.Namespace):
    """``function`` called with every parameter that ``add_signature_options`` made an option."""
    parameters = inspect.signature(function).parameters
    given = {name: getattr(args, name) for name in parameters if hasattr(args, name)}
    return function(
        **{n: tuple(v) if isinstance(parameters[n].default, tuple) else v for n, v in given.items()}
    )


def _command(commands, name: str, help: str, description: str, options: dict, epilog=None, raw=True):
    """A subcommand with ``options`` ({flag or positional name: add_argument keywords}, in help order);
    ``raw``: its description and epilog keep their line breaks."""
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    command = commands.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=formatter
    )
    _add_options(command, options)
    return command


def _add_options(parser, options: dict[str, dict]) -> None:
    """``options``: {flag or positional name: add_argument keywords}, in the order the help lists them."""
    for flag, keywords in options.items():
        parser.add_argument(flag, **keywords)


def _flag(help: str) -> dict:
    """An option that is off unless given."""
    return {"action": "store_true", "help": help}


def _value(metavar: str, help: str, **more) -> dict:
    """An option with a value, named ``metavar`` in the help."""
    return {"metavar": metavar, "help": help, **more}


def _choice(names, help: str) -> dict:
    """One of ``names`` (a badit.names list), the first by default (``{default}`` in ``help`` names it)."""
    first = next(iter(names))
    return {"choices": tuple(names), "default": first, "help": help.format(default=first)}


def _split_size(name: str, help: str) -> dict:
    """``data check``'s size of split ``name`` (a SplitSizes field); unset: the format's default."""
    return _value("N", f"seeded split: {help}", type=_size, dest=f"split_size_{name}")


# The options several commands share, defined once.
OVERRIDES = _value(
    "section.field=value",
    "change a config field, e.g. training.learning_rate=1e-4 (repeatable)",
    nargs="*",
    default=[],  # optional: without a default argparse names it among the missing arguments
)
TRUST_REMOTE_CODE = _flag(
    "accept a run folder's model.trust_remote_code: true (runs the model folder's Python code)"
)


def build_parser() -> argparse.ArgumentParser:
    from badit.data.rows import Columns
    from badit.experiments.demo import run_demo
    from badit.experiments.merge import merge_run
    from badit.names import DATA_FORMATS, EXPORT_FORMATS, MERGE_METHODS, METRICS

    parser = argparse.ArgumentParser(
        prog="badit",
        description="BADIT: multi-task instruct-tuning with orthogonal basic-ability experts (a PEFT method). "
        "Start with `badit demo`.",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show library log messages and tracebacks"
    )
    parser.add_argument("--version", action="version", version=f"badit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = _command(
        commands,
        "train",
        "train and evaluate one run described by a YAML config",
        "Train the configured method in the configured setting (multitask, single, continual),\n"
        "evaluate it and write everything into the run folder (output_dir): config.yaml, checkpoints/,\n"
        "logs/ (JSONL, TensorBoard), adapter/, predictions.jsonl, metrics.json, summary.md.",
        {
            "config": {"help": "a YAML config file, or a run folder (its config.yaml) with --resume"},
            "overrides": OVERRIDES,
            "--resume": _flag("continue the run in output_dir from its last checkpoint"),
            "--overwrite": _flag("delete an existing run in output_dir first"),
            "--output": _value("DIR", "shorthand for output_dir=DIR"),
        },
        EPILOG_TRAIN,
    )
    evaluate = _command(
        commands,
        "eval",
        "evaluate a trained run again",
        "Load the run's base model and trained adapter(s), generate greedily and score\n"
        "(ROUGE-L, exact match); writes predictions.jsonl, metrics.json and summary.md.",
        {
            "run": {
                "help": "a run folder written by `badit train`, or a PEFT adapter folder trained elsewhere "
                "(TRL, an own loop: then --data and --output)"
            },
            "overrides": OVERRIDES,
            "--output": _value("DIR", "write the results here instead of into the run folder"),
            "--data": _value(
                "PATH", "an adapter folder: the data to score it on (its test split; as data.path)"
            ),
            "--base": _value("MODEL", "an adapter folder: the base model (default: the one it records)"),
        },
        EPILOG_EVAL,
    )
    _command(
        commands,
        "compare",
        "table of runs (methods) by task with averages and the interference score",
        "Print a Markdown table: one row per task, one column per run, the average over\n"
        "tasks, the interference score of multi-task runs and the continual metrics of continual runs.",
        {
            "runs": _value("RUN", "run folders", nargs="+"),
            "--metric": _choice(METRICS, "score shown (default {default})"),
            "--output": _value("FILE", "also write the table (Markdown) to FILE"),
            "--json": _value("FILE", "also write all numbers as JSON to FILE"),
        },
        EPILOG_COMPARE,
    )
    analyze = _command(
        commands,
        "analyze",
        "where do the run's tasks interfere? gradient conflict, expert usage, neuron overlap",
        "Load a multitask (or continual) run's trained adapter and measure, on a batch of\n"
        "training examples per task: the cosine between the tasks' gradients (overall and per layer;\n"
        "negative = conflict), the mean routing weight of each expert per task (BADIT runs) and the\n"
        "overlap of the tasks' most active MLP neurons. Writes analysis.json and PNG heatmaps.",
        {
            "run": {"help": "a run folder written by `badit train` (setting multitask or continual)"},
            "--output": _value("DIR", "where to write (default RUN/analysis)"),
            # analyze_run's default, restated: reading its signature would import torch (badit.analysis)
            "--examples-per-task": {
                "type": int,
                "default": 8,
                "help": "training examples per task in the batch (default 8)",
            },
        },
    )
    export = _command(
        commands,
        "export",
        "a BADIT adapter as a plain LoRA folder (vLLM, TGI, PEFT) or a merged model",
        "With a fixed routing (a task's mean routing over its training prompts, given weights,\n"
        "or uniform) a BADIT adapter is exactly a LoRA of rank 2*K*r. Writes a PEFT LoRA folder that\n"
        "loads without badit (--format lora) or the merged full model (--format merged).",
        {"source": _value("RUN|ADAPTER", "a run folder or a saved BADIT adapter folder")},
    )
    _add_options(
        export.add_mutually_exclusive_group(),
        {
            "--task": _value("NAME", "the task's mean routing (run folders only)"),
            "--weights": _value(
                "w1,..,wK", "mixing weights (times K with router_scale=preserve: 1 each = uniform)"
            ),
            "--uniform": _flag("every expert weighted equally (the default)"),
        },
    )
    _add_options(
        export,
        {
            "--format": _choice(EXPORT_FORMATS, "default {default}"),
            "--base": _value(
                "MODEL",
                "the base model (folder or hub name; default: the run's model or the adapter's recorded base)",
            ),
            "--dtype": {
                "choices": ("float32", "bfloat16", "float16"),
                "help": "--format merged: the saved weights' dtype (default: the base model's)",
            },
            "--output": _value("DIR", "the folder to write", required=True),
            "--push-to-hub": _value(
                "OWNER/NAME",
                "then upload the folder to this Hugging Face hub repository (created if missing)",
            ),
            "--private": _flag("--push-to-hub: create the repository private"),
        },
    )
    merge = _command(
        commands,
        "merge",
        "merge a single-task LoRA run's adapters (TIES, task arithmetic) into one evaluated run",
        "Merge the one-LoRA-per-task adapters of a `setting: single`, `method.name: lora` run with\n"
        "PEFT's add_weighted_adapter and evaluate the result on every task: a multi-task run folder\n"
        'that compare and report read like any other (docs/method.md, "Merged single-task LoRAs").',
        {
            "run": {"help": "a `setting: single` lora run folder"},
            "--method": {"choices": MERGE_METHODS, "required": True, "help": "how the task deltas combine"},
            "--output": _value("DIR", "the run folder to write", required=True),
        },
    )
    add_signature_options(  # merge_run's parameters: names, defaults and types from there
        merge,
        merge_run,
        {"weight": "λ", "density": "ties: fraction kept", "overwrite": "replace an existing run in DIR"},
    )
    _add_options(
        merge,
        {
            "overrides": {
                **OVERRIDES,
                "metavar": "evaluation.field=value",
                "help": "change an evaluation field, e.g. evaluation.split=dev (choose --weight on dev)",
            }
        },
    )
    _command(
        commands,
        "report",
        "one self-contained HTML page: scores, interference, training curves, regrouping, router health",
        "Write one HTML file (plots and styles embedded, no network) comparing the runs:\n"
        "per-task scores (seed spread when several seeds of a method are given), interference score,\n"
        "continual metrics, training curves, BADIT regrouping and router health, and the `badit analyze`\n"
        "results where present. Every number comes from files in the run folders; the page names them.",
        {
            "runs": _value("RUN", "run folders, or folders of runs (a sweep, the demo's folder)", nargs="+"),
            "--output": _value("FILE", "HTML file (default report.html)", default="report.html"),
            "--title": {"default": "badit report", "help": "the page's title"},
        },
    )

    data = commands.add_parser("data", help="data tools (see `badit data check --help`)")
    sizes = "a count, or a fraction such as 0.1"
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND")
    _command(
        data_commands,
        "check",
        "validate a data source and report counts per task",
        "Read every task of PATH and report its train/dev/test counts and every problem found.\n"
        "PATH: a SuperNI folder (a folder per task with train/dev/test.json, or raw taskNNN_name.json\n"
        "files), a .jsonl/.csv file of {task, prompt, completion} or chat {task, messages} rows, a folder\n"
        "written by datasets' save_to_disk, a .json/.parquet data file, or a hub dataset name.\n"
        "Exit status 0 when all is well, 1 when problems were found.",
        {
            "path": {"help": "the data (as data.path in a run config)"},
            "--format": _choice(DATA_FORMATS, "force the format (default: recognised from PATH)"),
            **{  # own data's columns: the Columns fields, as data.<name>_column in a config
                f"--{column.name}-column": _value(
                    "NAME", f"own data: the {column.name} column ({column.default})", default=column.default
                )
                for column in dataclasses.fields(Columns)
            },
            # the SplitSizes fields; their defaults differ by format, hence the helps written here
            "--train-size": _split_size("train", "training examples per task (default: all; SuperNI 1000)"),
            "--dev-size": _split_size("dev", f"dev examples per task, {sizes} (default 0)"),
            "--test-size": _split_size(
                "test", f"test examples per task, {sizes} (default 10%%; SuperNI 100)"
            ),
            "--seed": _value("N", "seed of the split (default 42)", type=int, dest="split_size_seed"),
        },
    )
    _command(
        data_commands,
        "fetch",
        "download SuperNI tasks (e.g. the paper's 15) into a folder per task with train/dev/test",
        "Download named tasks from the natural-instructions repository (allenai/natural-instructions) and\n"
        "split each with a seed into DIR/<task>/{train,dev,test}.json, the layout data.path reads. With\n"
        "--benchmark superni15: the 15 tasks of the continual benchmark (SAPT / O-LoRA / BADIT), 1000 train,\n"
        "100 dev and 100 test each: the same tasks as the papers, a seeded split of their instances (not\n"
        "the papers' exact instances). Every task is downloaded and checked before anything is written.",
        {
            "tasks": {
                "nargs": "*",
                "metavar": "TASK",
                "help": "task names, e.g. task002_quoref_answer_generation",
            },
            "--benchmark": {"choices": ("superni15",), "help": "all tasks of a benchmark (superni15)"},
            "--output": _value("DIR", "the folder to write (new, empty, or an earlier fetch)", required=True),
            "--base-url": _value("URL", "where <task>.json files are (default: the repository on GitHub)"),
            "--train-size": _value("N", "training examples per task (default 1000)", type=int, default=1000),
            "--dev-size": _value("N", "dev examples per task (default 100)", type=int, default=100),
            "--test-size": _value("N", "test examples per task (default 100)", type=int, default=100),
            "--seed": _value("N", "seed of the split (default 42)", type=int, default=42),
        },
    )
    _command(
        commands,
        "configs",
        "list the configs badit ships, or copy one to edit",
        "badit configs list: the run and sweep configs installed with badit (paper settings, CPU sweeps).\n"
        "badit configs copy NAME [DEST]: copy one (e.g. superni_multitask, sweeps/interference_cpu) to DEST\n"
        "(default: NAME's file name here); an existing file is never overwritten.",
        {
            "action": {"choices": ("list", "copy"), "help": "list or copy"},
            "name": {"nargs": "?", "help": "copy: the config's name, as `badit configs list` prints it"},
            "dest": {"nargs": "?", "help": "copy: the file to write (default: the config's file name here)"},
        },
    )
    _command(
        commands,
        "sweep",
        "methods x learning rates x seeds: lr chosen on dev, mean ± std on test, seed- and example-aware 95%% intervals, cost",
        "Run a sweep file: every method at every learning rate with the first seed, scored on\n"
        "dev; the best learning rate per method with every seed, scored on test; one adapter per task\n"
        "for the interference methods. Writes ordinary run folders, sweep.json, sweep.md and plots.\n"
        "Rerunning resumes (finished runs are skipped). The file format: badit/experiments/sweep.py.",
        {
            "sweep_file": _value("SWEEP.yaml", "the sweep file"),
            "--output": _value("DIR", "output folder (default: the file's output_dir)"),
            "--backend": {
                "choices": ("local", "submitit"),
                "help": "where runs train (default: the file's launcher.backend, else local): local subprocesses, "
                "or submitit jobs (Slurm where srun exists, else submitit's local executor)",
            },
            "--dry-run": _flag(
                "check the file and print the runs (finished ones: skipped on a rerun); train nothing"
            ),
        },
        EPILOG_SWEEP,
    )
    demo = _command(
        commands,
        "demo",
        "LoRA vs BADIT on the embedded SmolLM2-135M and generated tasks (a few minutes on a CPU)",
        "Generate six small tasks that conflict on shared inputs (copy/reverse, sort up/down, "
        "add/subtract one), train LoRA and BADIT on them jointly with the embedded SmolLM2-135M-Instruct, "
        "evaluate, print the comparison and write run folders, the table and analysis plots under --output.",
        {},
        raw=False,
    )
    add_signature_options(  # the options are run_demo's parameters: names, defaults and types from there
        demo,
        run_demo,
        {
            "output_dir": "where to write",
            "steps": "optimizer steps per method",
            "eval_examples": "test examples per task",
            "methods": "methods to compare",
            "model": "another causal LM (folder or hub name) instead of SmolLM2",
            "analysis": "skip the interference analysis and plots",
            "seed": "seed of the generated tasks and the training",
            "single": "also train one adapter per task (same examples per task) to get the interference "
            "score (about doubles the time)",
        },
        flags={"output_dir": "--output"},
        metavars={"output_dir": "DIR", "methods": "METHOD", "steps": "N", "eval_examples": "N", "seed": "N"},
    )
    for command in (train, evaluate, analyze, export, merge):
        command.add_argument("--trust-remote-code", **TRUST_REMOTE_CODE)
    return parser


def _train(args) -> int:
    from badit.experiments.config import load_config

    path = Path(args.config)
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output_dir={args.output}")
    from badit.experiments.folder import CONFIG_FILE, RunError, RunFolder

    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise RunError(
                f"{path} is a folder without {CONFIG_FILE}: give a YAML config file or a run folder"
            )
        path = path / CONFIG_FILE
    folder = RunFolder(path.parent) if path.name == CONFIG_FILE else None
    own = folder is not None and folder.holds_run()  # a run's own config (also in a copy without marker)
    if own:
        folder.check_config_file()
    config = load_config(path, overrides)  # before torch is imported: a config error shows at once
    given = any(o.split("=", 1)[0].strip() == "output_dir" for o in overrides)
    if own:
        folder.check_remote_code(config, overrides)
        if not given:  # the run is the folder where it is now (it may have been moved or copied)
            config = dataclasses.replace(config, output_dir=str(path.parent.resolve()))
    elif args.resume and folder is not None and folder.has_run_contents() and not given:
        if Path(config.output_dir).resolve() != path.parent.resolve():  # a copy of an older badit's run
            raise RunError(
                f"{path.parent} holds a run whose {CONFIG_FILE} names another folder ({config.output_dir}); to "
                f"continue it here, pass --output {path.parent}"
            )
    _quiet_libraries(args)
    from badit.experiments.results import summary_table
    from badit.experiments.settings import run

    metrics = run(config, resume=args.resume, overwrite=args.overwrite)
    if metrics:
        print()
        print(summary_table(metrics, f"{config.name}: {config.method.name}, {config.setting}"))
        print(f"run folder: {printable(config.output_dir)}")
        _warn_router(config.output_dir)
    return 0


def _warn_router(run_dir) -> None:
    """Once, at the end of training: a collapsed or still-uniform router (BADIT runs)."""
    from badit.experiments.folder import RunFolder
    from badit.training.router_logging import router_warning

    warning = router_warning(run_dir, RunFolder(run_dir).router_logs())
    if warning:
        print(f"badit train: warning: {one_line(warning)}", file=sys.stderr)


def _export(args) -> int:
    from badit.experiments.export import export

    path, distance = export(
        args.source,
        args.output,
        task=args.task,
        weights=args.weights,
        fmt=args.format,
        base=args.base,
        dtype=args.dtype,
    )
    print(f"export ({args.format}): {Path(path).resolve()}")
    if args.push_to_hub:
        from badit.experiments.export import push_export

        print(f"pushed: {push_export(path, args.push_to_hub, private=args.private)}")
    if distance is not None:
        n = int(distance["prompts"])
        print(
            f"fixed routing vs the live router on {n} test prompts: next-token logits within "
            f"{distance['max_abs_logit']:.3g}, same greedy token for {round(distance['argmax_agreement'] * n)}/{n}"
            " (in the export's README.md)"
        )
    return 0


def _merge(args) -> int:
    from badit.experiments.merge import merge_run
    from badit.experiments.results import summary_table

    metrics = merge_run(
        args.run, args.output, args.method, args.weight, args.density, args.overwrite, tuple(args.overrides)
    )
    print(summary_table(metrics, f"{args.run} merged ({args.method})"))
    print(f"merged run: {Path(args.output).resolve()}")
    return 0


def _report(args) -> int:
    from badit.experiments.report import write_report

    path = write_report(args.runs, args.output, args.title)
    print(f"report: {path.resolve()}")
    return 0


def _eval(args) -> int:
    from badit.experiments.folder import RunFolder
    from badit.experiments.reevaluate import evaluate_adapter, reevaluate
    from badit.experiments.results import summary_table

    if not RunFolder(args.run).has_config():  # an adapter trained outside badit
        metrics = evaluate_adapter(args.run, args.data, args.output, args.base, args.overrides)
        print(summary_table(metrics, f"{args.run} (adapter)"))
        return 0
    metrics = reevaluate(args.run, args.overrides, args.output)
    print(summary_table(metrics, f"{args.run} (re-evaluated)"))
    return 0


def _compare(args) -> int:
    from badit.data.files import atomic_write_json, atomic_write_text
    from badit.experiments.compare import compare, comparison_json, format_table

    runs = compare(args.runs)
    table = format_table(runs, args.metric)
    print(table, end="")
    if args.output:
        atomic_write_text(args.output, table)
    if args.json:
        atomic_write_json(args.json, comparison_json(runs))
    return 0


def _sweep(args) -> int:
    from badit.experiments.sweep import is_finished, load_sweep, plan_final, plan_selection, run_sweep

    sweep = load_sweep(args.sweep_file, args.output)
    if args.backend:
        from badit.experiments.sweep import SweepError, check_backend

        def fail(message: str):
            raise SweepError(f"--backend: {message}")

        check_backend(args.backend, fail)
        sweep.launcher.backend = args.backend
    if args.dry_run:
        final = plan_final(sweep, {m: "<chosen lr>" for m in sweep.methods})
        for job in plan_selection(sweep) + final:
            what = f"the adapter of {job.evaluate} evaluated on test" if job.evaluate else "trained"
            if is_finished(job.run_dir(sweep)):
                what = "finished: skipped"  # what a rerun resumes is visible before it starts
            print(f"{job.name}: method {job.method}, lr {job.learning_rate}, seed {job.seed} ({what})")
        return 0
    run_sweep(sweep)
    return 0


def _analyze(args) -> int:
    from badit.experiments.analyze import analyze_run
    from badit.experiments.folder import ANALYSIS_FILE, RunError, RunFolder

    if args.examples_per_task < 1:
        raise RunError(f"--examples-per-task must be at least 1, got {args.examples_per_task}")
    result = analyze_run(args.run, args.output, args.examples_per_task)
    conflict = result["gradient_conflict"]
    a, b, cosine = conflict["most_conflicting_pair"]
    a, b = printable(a), printable(b)  # task names, from the data
    print(f"mean gradient cosine between tasks: {conflict['mean_offdiag']:+.3f} (negative = conflict)")
    print(
        f"most conflicting pair: {a} vs {b} ({cosine:+.3f}); most conflicting layer: {conflict['most_conflicting_layer']}"
    )
    print(f"mean top-neuron overlap between tasks (Jaccard): {result['neuron_overlap']['mean_offdiag']:.3f}")
    if "router_separability" in result:
        print(f"routing: {result['router_separability']['verdict']}")
    print(f"written: {Path(args.output or RunFolder(args.run).analysis_dir)}/ ({ANALYSIS_FILE}, *.png)")
    return 0


def _data(args) -> int:
    return _data_fetch(args) if args.data_command == "fetch" else _data_check(args)


def _data_fetch(args) -> int:
    from badit.data.tasks import DEFAULT_BASE_URL, SplitSizes, download_tasks
    from badit.names import SUPERNI_BENCHMARK
    from badit.outputs import OutputError, check_output_folder, mark_output_folder

    names = list(args.tasks) + (list(SUPERNI_BENCHMARK) if args.benchmark == "superni15" else [])
    if not names:
        raise OutputError("name the tasks to fetch (TASK ...) or a benchmark (--benchmark superni15)")
    output = check_output_folder(args.output, "data fetch")
    sizes = SplitSizes(train=args.train_size, dev=args.dev_size, test=args.test_size, seed=args.seed)
    written = download_tasks(names, output, args.base_url or DEFAULT_BASE_URL, sizes)  # all checked first
    mark_output_folder(output, "data fetch")
    print(
        f"{len(written)} tasks in {output} (train {args.train_size}, dev {args.dev_size}, test {args.test_size} each)"
    )
    print(f"use it as data.path={output}")
    return 0


def _configs(args) -> int:
    from badit.experiments.recipes import copy_config, list_configs

    if args.action == "list":
        for name, summary in list_configs():
            print(f"{name:40s} {summary}")
        return 0
    target = copy_config(args.name, args.dest)
    print(f"copied to {target}")
    base = next(
        (line for line in target.read_text(encoding="utf-8").splitlines() if line.startswith("base:")), None
    )
    if base is not None:  # a sweep: its base config is named relative to it
        print(f"its {base.split('#')[0].strip()} is relative to it: copy that config beside it too")
    return 0


def _data_check(args) -> int:
    from badit.data import Columns, run_data_check

    columns = Columns(**{f.name: getattr(args, f"{f.name}_column") for f in dataclasses.fields(Columns)})
    given = {
        name.removeprefix("split_size_"): value
        for name, value in vars(args).items()
        if name.startswith("split_size_")
    }
    sizes = {key: value for key, value in given.items() if value is not None}
    return run_data_check(args.path, sizes=sizes, format=args.format, columns=columns)


def _demo(args) -> int:
    from badit.experiments.demo import run_demo

    result = call_with_options(run_demo, args)
    print()
    print(result.table, end="")
    print()
    for method, folder in result.run_dirs.items():
        print(f"{method}: {folder}/ (metrics.json, predictions.jsonl, summary.md, logs/)")
    print(f"table: {result.output_dir / 'comparison.md'}")
    if result.analysis_dir is not None:
        print(
            f"analysis (gradient conflict, expert usage, neuron overlap): {result.analysis_dir}/*.png, analysis.json"
        )
        for line in result.routing:
            print(line)
    print(f"TensorBoard: tensorboard --logdir {result.output_dir}")
    from badit.experiments.report import write_report

    report = write_report(list(result.run_dirs.values()), result.output_dir / "report.html", "badit demo")
    print(f"report (open in a browser): {report.resolve()}")
    if not args.single:
        print("interference score (multi-task vs one adapter per task): badit demo --single")
    print(f"demo finished in {result.seconds / 60:.1f} min")
    return 0


def _quiet_libraries(args) -> None:
    """transformers without its progress bars and notices (unless --verbose); imports torch."""
    if not args.verbose:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def _dashed_training_fields(extra: list[str]) -> list[str]:
    """``--name value`` / ``--name=value`` of ``badit train`` as the override ``training.name=value`` when
    ``name`` (dashes read as underscores) is a ``training:`` field (badit's or any TrainingArguments
    field); a lone ``--flag`` means ``true``. Any other ``--name`` stops with one line that shows the
    override form. Imports transformers (for the field names): train needs it anyway."""
    import dataclasses

    from transformers import TrainingArguments

    from badit.experiments.config import TrainingConfig

    fields = {f.name for f in dataclasses.fields(TrainingConfig)} | {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    result, i = [], 0
    while i < len(extra):
        word = extra[i]
        if not word.startswith("--"):
            result.append(word)
            i += 1
            continue
        name, has_value, value = word[2:].partition("=")
        if not has_value:
            following = extra[i + 1] if i + 1 < len(extra) else None
            has_value = following is not None and not following.startswith("--") and "=" not in following
            value = following if has_value else "true"
            i += 1 if has_value else 0
        key = name.replace("-", "_")
        if key not in fields:
            print(
                f"badit train: error: unrecognized option {word}; config fields are given as "
                f"section.field=value, e.g. training.learning_rate=1e-4 or method.r=8 (`badit train --help`)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        result.append(f"training.{key}={value}")
        i += 1
    return result


def _printable_record(record: logging.LogRecord) -> bool:
    """Log lines name files, tasks and runs: printed without control characters (`badit.errors.printable`)."""
    record.msg, record.args = printable(record.getMessage()), None
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`train CONFIG --resume a.b=1`): argparse leaves those unparsed.
    args, extra = parser.parse_known_args(argv)
    if args.command == "train" and any(a.startswith("--") for a in extra):
        extra = _dashed_training_fields(extra)  # `--learning_rate 1e-4` (the Trainer/TRL habit)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "data" and args.data_command is None:
        parser.parse_args(["data", "--help"])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_printable_record)
    if not args.verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("badit").setLevel(logging.INFO)
    # train: after its config is read (see _train); data check and report never need transformers (nor torch)
    if args.command not in ("train", "data", "report", "configs"):
        _quiet_libraries(args)
    handlers = {
        "train": _train,
        "eval": _eval,
        "compare": _compare,
        "analyze": _analyze,
        "data": _data,
        "configs": _configs,
        "demo": _demo,
        "report": _report,
        "export": _export,
        "merge": _merge,
        "sweep": _sweep,
    }
    from badit.experiments.folder import trusting_remote_code

    try:
        with trusting_remote_code(getattr(args, "trust_remote_code", False)):
            return handlers[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted; `badit train RUN --resume` continues from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_error_message(error)  # None: a bug, shown with its traceback
        if args.verbose or message is None:
            raise
        print(f"badit {args.command}: error: {message}", file=sys.stderr)
        return getattr(error, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
