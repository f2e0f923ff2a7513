"""Data loading, validation errors, splits, order, sampling, batching, `data check` and the downloader."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from pathlib import Path

import pytest
import torch

from badit.data import (
    DataCollator,
    DataError,
    PromptTemplate,
    SplitSizes,
    TaskBalancedSampler,
    check_data,
    download_tasks,
    format_prompt,
    list_tasks,
    load_task,
    load_tasks,
    run_data_check,
    task_order,
    write_split_layout,
)
from badit.data.batches import task_probabilities
from badit.data.tasks import split_indices


def task_json(name: str, n: int, definition="Say the number.", outputs=None) -> dict:
    """A small task in the natural-instructions format; instance i answers str(i) (or `outputs(i)`)."""
    return {
        "Definition": [definition],
        "Output_language": ["English"],
        "Positive Examples": [{"input": "one", "output": "1", "explanation": "."}],
        "Instances": [
            {"id": f"{name}-{i}", "input": f"x{i}", "output": outputs(i) if outputs else [str(i)]}
            for i in range(n)
        ],
    }


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture
def folders(tmp_path) -> Path:
    """Folder-per-task layout with two good tasks."""
    root = tmp_path / "data"
    for name, sizes in {"task002_b": (5, 2, 3), "task001_a": (4, 1, 2)}.items():
        for split, n in zip(("train", "dev", "test"), sizes):
            data = task_json(name, n)
            for inst in data["Instances"]:
                inst["id"] = f"{split}-{inst['id']}"
            write(root / name / f"{split}.json", data)
    return root


@pytest.fixture
def raw(tmp_path) -> Path:
    """Raw release layout: one JSON per task, 30 and 12 instances."""
    root = tmp_path / "raw"
    write(root / "task010_x.json", task_json("task010_x", 30))
    write(root / "task003_y.json", task_json("task003_y", 12, outputs=lambda i: f"answer {i}"))
    return root


# ---- loading -------------------------------------------------------------------------------------


def test_folder_layout_counts_sorted_names_and_fields(folders):
    tasks = load_tasks(folders, "train")
    assert [t.name for t in tasks] == ["task001_a", "task002_b"]  # sorted, never file-system order
    assert [len(t.instances) for t in tasks] == [4, 5]
    assert [len(t.instances) for t in load_tasks(folders, "test")] == [2, 3]
    inst = tasks[1].instances[3]
    assert (inst.id, inst.input, inst.outputs) == ("train-task002_b-3", "x3", ["3"])
    assert tasks[0].definition == "Say the number."
    assert tasks[0].positive_examples[0].outputs == ["1"]
    assert load_tasks(folders, "dev", tasks=["task002_b"])[0].instances[1].id == "dev-task002_b-1"


def test_string_output_becomes_single_reference(raw):
    task = load_task(raw, "task003_y", "test", SplitSizes(train=5, test=4))
    assert all(len(i.outputs) == 1 and i.outputs[0] == f"answer {i.input[1:]}" for i in task.instances)


def test_raw_split_sizes_disjoint_seeded_and_independent_of_other_tasks(raw, tmp_path):
    sizes = SplitSizes(train=20, dev=3, test=5, seed=7)
    parts = {s: load_task(raw, "task010_x", s, sizes).instances for s in ("train", "dev", "test")}
    ids = {s: {i.id for i in v} for s, v in parts.items()}
    assert [len(ids[s]) for s in ("train", "dev", "test")] == [20, 3, 5]
    assert (
        not (ids["train"] & ids["test"])
        and not (ids["train"] & ids["dev"])
        and not (ids["dev"] & ids["test"])
    )
    # same seed -> same split, even when the folder holds other tasks; another seed -> another split
    alone = tmp_path / "alone"
    write(alone / "task010_x.json", task_json("task010_x", 30))
    assert {i.id for i in load_task(alone, "task010_x", "test", sizes).instances} == ids["test"]
    other = load_task(raw, "task010_x", "test", SplitSizes(train=20, dev=3, test=5, seed=8)).instances
    assert {i.id for i in other} != ids["test"]
    # default sizes: 100 test first, then up to 1000 train; a 30-instance task cannot give 100 test
    with pytest.raises(DataError, match=r"task010_x.json: 30 instances, but test \(100\)"):
        load_task(raw, "task010_x", "train")


def test_head_test_takes_the_first_instances_as_test():
    idx = split_indices(50, "t", SplitSizes(train=40, test=10, head_test=True))
    assert idx["test"] == list(range(10))
    assert sorted(idx["train"]) == list(range(10, 50))


def test_write_split_layout_round_trips(raw, tmp_path):
    sizes = SplitSizes(train=6, dev=2, test=4, seed=3)
    out = tmp_path / "split"
    assert write_split_layout(raw, out, sizes) == ["task003_y", "task010_x"]
    for split in ("train", "dev", "test"):
        want = [i.id for i in load_task(raw, "task010_x", split, sizes).instances]
        assert [i.id for i in load_task(out, "task010_x", split).instances] == want


# ---- bad input: each raises DataError naming the file and the problem ------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"Instances": [{"input": "a", "output": "b"}]}, r"missing field 'Definition'"),
        ({"Definition": ["d"]}, r"missing field 'Instances'"),
        ({"Definition": ["d"], "Instances": [{"input": "a"}]}, r"Instances\[0\]: missing field 'output'"),
        ({"Definition": ["d"], "Instances": [{"input": 3, "output": "b"}]}, r"'input' must be a string"),
        ({"Definition": ["d"], "Instances": [{"input": "a", "output": []}]}, r"'output' must be a string or"),
        ({"Definition": ["d"], "Instances": []}, r"'Instances' is empty"),
        ([1, 2], r"expected a JSON object"),
    ],
)
def test_invalid_task_content(tmp_path, content, message):
    write(tmp_path / "d" / "task1_bad" / "train.json", content)
    with pytest.raises(DataError, match=message) as err:
        load_tasks(tmp_path / "d", "train")
    assert "task1_bad/train.json" in str(err.value)
    assert "'Definition'" in str(err.value) and "'Instances'" in str(err.value)  # the fix: the fields needed


def test_invalid_json_and_non_utf8(tmp_path):
    (tmp_path / "d" / "task1_json").mkdir(parents=True)
    (tmp_path / "d" / "task1_json" / "train.json").write_text('{"Definition": ["d"],\n "Instances": [}')
    with pytest.raises(DataError, match=r"task1_json/train.json: invalid JSON at line 2, column 16"):
        load_task(tmp_path / "d", "task1_json")
    (tmp_path / "d" / "task2_bytes").mkdir()
    (tmp_path / "d" / "task2_bytes" / "train.json").write_bytes(b'{"Definition": ["caf\xe9"]}')
    with pytest.raises(
        DataError, match=r"task2_bytes/train.json: not valid UTF-8 \(byte 0xe9 at offset 20\)"
    ):
        load_task(tmp_path / "d", "task2_bytes")


def test_task_folder_without_test_data(folders):
    (folders / "task001_a" / "test.json").unlink()
    with pytest.raises(
        DataError, match=r"task001_a/test.json: no test data for task 'task001_a'; add test.json"
    ):
        load_tasks(folders, "test")


def test_paths_that_escape_the_data_folder(folders, tmp_path):
    for name in ("../task001_a", "task001_a/../../x", "/etc/passwd", ".."):
        with pytest.raises(DataError, match="not a plain name"):
            load_tasks(folders, "train", tasks=[name])
    outside = tmp_path / "elsewhere"
    write(outside / "train.json", task_json("t", 2))
    (folders / "task003_link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match=r"task003_link.*outside the data folder"):
        load_tasks(folders, "train")
    (folders / "task003_link").unlink()
    (folders / "task001_a" / "dev.json").unlink()
    (folders / "task001_a" / "dev.json").symlink_to(outside / "train.json")
    with pytest.raises(DataError, match=r"dev.json: resolves to .*outside the data folder"):
        load_task(folders, "task001_a", "dev")


def test_not_a_data_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_tasks(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tasks found"):
        list_tasks(tmp_path / "empty")


# ---- data check -------------------------------------------------------------------------------------


def test_check_data_reports_counts_and_exit_code(folders):
    report, ok = check_data(folders)
    assert ok
    lines = report.splitlines()
    assert lines[2].split() == ["task001_a", "4", "1", "2"]
    assert lines[3].split() == ["task002_b", "5", "2", "3"]
    out = io.StringIO()
    assert run_data_check(folders, out) == 0 and out.getvalue() == report


def test_check_data_lists_every_problem_without_traceback(folders, tmp_path):
    (folders / "task001_a" / "test.json").unlink()
    (folders / "task002_b" / "train.json").write_bytes(b"\xff\xfe")
    write(folders / "task003_c" / "train.json", task_json("task003_c", 2))
    write(folders / "task003_c" / "test.json", task_json("task003_c", 1))  # same ids as train: a leak
    out = io.StringIO()
    assert run_data_check(folders, out) == 1
    report = out.getvalue()
    assert "Traceback" not in report
    assert "task001_a/test.json: no test data" in report
    assert "task002_b/train.json: not valid UTF-8" in report
    assert "task003_c: 1 instance ids are in both train and test" in report
    assert "3 tasks, 3 problems" in report
    report, ok = check_data(tmp_path / "nowhere")
    assert not ok and report.startswith("error:") and "no such file or folder" in report


def test_check_data_raw_layout(raw):
    report, ok = check_data(raw, SplitSizes(train=100, test=5))
    assert ok, report
    assert [line.split() for line in report.splitlines()[2:4]] == [
        ["task003_y", "7", "5"],
        ["task010_x", "25", "5"],
    ]


def test_check_data_raw_files_too_small_for_the_split_say_so_once_with_the_flag(raw):
    # task003_y has 12 instances (see the fixture), task010_x 30: test 100 leaves none for training
    report, ok = check_data(raw)
    problems = [line for line in report.splitlines() if line.startswith("problem:")]
    assert not ok and len(problems) == len(set(problems)) == 2  # one per task, not one per split
    assert "2 tasks, 2 problems" in report
    assert all("--test-size" in p and "data.split_sizes.test" in p for p in problems)


def test_check_data_notes_long_lines_and_numbers_as_answers(tmp_path):
    rows = [{"task": "t", "prompt": "x" * 1_000_001, "completion": "a"}]  # one character over LONG_ROW
    rows += [{"task": "t", "prompt": f"p{i}", "completion": i if i % 2 else [str(i), "b"]} for i in range(10)]
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report, ok = check_data(tmp_path / "odd.jsonl")
    assert ok, report  # reported, not refused: a number is read as the text JSON writes
    notes = [line for line in report.splitlines() if line.startswith("note:")]
    # line 1: 1_000_001 + the JSON around it (44 characters) = 1.0 million characters
    assert any("odd.jsonl line 1: 1.0 million characters" in n for n in notes)
    # lines 3, 5, 7, 9, 11 hold 1, 3, 5, 7, 9 (rows i = 1, 3, ...): the first is named, 4 more counted
    assert any(
        "odd.jsonl line 3, column 'completion': 1 holds a number" in n and "(and 4 more lines)" in n
        for n in notes
    )


# ---- prompt, order, sampler, collator -----------------------------------------------------------------


def test_paper_prompt_and_positive_examples(folders):
    task = load_task(folders, "task001_a")
    inst = task.instances[2]
    assert (
        format_prompt(task, inst)
        == "Say the number.\n\nNow complete the following example -\nInput: x2\nOutput: "
    )
    two_shot = PromptTemplate(num_pos_examples=2).format(task, inst)  # only one example exists
    assert two_shot == (
        "Say the number.\n\nPositive Example 1 -\nInput: one\nOutput: 1\n\n"
        "Now complete the following example -\nInput: x2\nOutput: "
    )
    assert PromptTemplate(template="[{task}] {input} =").format(task, inst) == "[task001_a] x2 ="
    for bad in ("no input here", "{input} {input}", "{input} {label}"):
        with pytest.raises(ValueError, match="prompt template"):
            PromptTemplate(template=bad)


def test_task_order():
    names = ["task9_c", "task1_a", "task5_b", "task3_d"]
    assert task_order(names) == ["task1_a", "task3_d", "task5_b", "task9_c"]
    shuffled = task_order(names, seed=3)
    assert shuffled == task_order(list(reversed(names)), seed=3)  # input order never matters
    assert sorted(shuffled) == sorted(names) and shuffled != task_order(names, seed=4)
    assert task_order(names, order=["task5_b", "task1_a"]) == ["task5_b", "task1_a"]
    with pytest.raises(ValueError, match=r"unknown tasks \['task7'\], repeated \['task1_a'\]"):
        task_order(names, order=["task1_a", "task7", "task1_a"])


def test_task_balanced_sampler_probabilities_and_reproducibility():
    task_ids = [0] * 100 + [1] * 25
    assert torch.allclose(
        task_probabilities(torch.tensor(task_ids), 2.0), torch.tensor([2 / 3, 1 / 3]).double()
    )
    assert torch.allclose(task_probabilities(torch.tensor(task_ids), 1.0), torch.tensor([0.8, 0.2]).double())
    sampler = TaskBalancedSampler(task_ids, temperature=2.0, num_samples=30000, seed=1)
    draws = torch.tensor(list(sampler))
    assert len(draws) == len(sampler) == 30000
    share_task1 = (draws >= 100).double().mean().item()
    assert abs(share_task1 - 1 / 3) < 0.01
    # within a task, uniform: every one of task 1's 25 examples drawn about 10000/25 = 400 times
    per_example = torch.bincount(draws[draws >= 100] - 100, minlength=25)
    assert per_example.min() > 300 and per_example.max() < 500
    assert list(sampler) == draws.tolist()
    sampler.set_epoch(1)
    assert list(sampler) != draws.tolist()


def test_collator_pads_right_for_training_and_left_for_generation():
    examples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task_id": 3},
        {"input_ids": [8], "labels": [8], "task_id": 1},
    ]
    batch = DataCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["task_ids"].tolist() == [3, 1] and batch["task_ids"].dtype == torch.long
    left = DataCollator(pad_token_id=9, padding_side="left", pad_to_multiple_of=4)(examples)
    assert left["input_ids"].tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


# ---- downloader (offline: a local HTTP server and file:// URLs) ------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    site = tmp_path / "site"
    write(site / "tasks" / "task010_x.json", task_json("task010_x", 30))
    write(site / "tasks" / "task011_bad.json", {"Definition": ["d"]})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site))
    )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/tasks", site
    httpd.shutdown()
    httpd.server_close()


def test_download_raw_and_split_layouts(server, tmp_path):
    url, site = server
    assert download_tasks(["task010_x"], tmp_path / "raw", base_url=url) == ["task010_x"]
    assert json.loads((tmp_path / "raw" / "task010_x.json").read_text()) == task_json("task010_x", 30)
    sizes = SplitSizes(train=10, test=5, seed=1)
    download_tasks(["task010_x"], tmp_path / "split", base_url=(site / "tasks").as_uri(), sizes=sizes)
    assert sorted(p.name for p in (tmp_path / "split" / "task010_x").iterdir()) == ["test.json", "train.json"]
    for split in ("train", "test"):
        want = [i.id for i in load_task(tmp_path / "raw", "task010_x", split, sizes).instances]
        assert [i.id for i in load_task(tmp_path / "split", "task010_x", split).instances] == want


def test_download_errors_write_nothing(server, tmp_path):
    url, _ = server
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"task404_missing.json: download failed \(HTTP 404"):
        download_tasks(["task010_x", "task404_missing"], dest, base_url=url)
    with pytest.raises(DataError, match=r"task011_bad.json: missing field 'Instances'"):
        download_tasks(["task010_x", "task011_bad"], dest, base_url=url)
    with pytest.raises(DataError, match="not a plain name"):
        download_tasks(["../tasks/task010_x"], dest, base_url=url)
    assert not dest.exists()


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    import os
    import stat

    from badit.data.files import atomic_write_text

    target = tmp_path / "out" / "metrics.json"
    atomic_write_text(target, "old")
    old_umask = os.umask(0o022)
    try:
        atomic_write_text(target, "new")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]  # no temp file left
