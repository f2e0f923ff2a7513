"""Own data: JSONL / CSV files of {task, prompt, completion} or chat messages, `datasets` datasets
(in memory, saved folder, data files), format recognition, seeded splits, bad input and `data check`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from badit.data import (
    IGNORE_INDEX,
    Columns,
    DataError,
    PromptTemplate,
    SplitSizes,
    check_data,
    detect_format,
    encode_prompts,
    open_source,
    run_data_check,
    source_from_dataset,
    tokenize_tasks,
)
from badit.data.tasks import split_indices
from tests.helpers import char_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def mix_rows(n_sum: int = 10, n_caps: int = 4) -> list[dict]:
    """Two tasks: `sum` (n_sum rows "i+1=" -> str(i+1)) and `caps` (two acceptable answers each)."""
    rows = [{"task": "sum", "prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(n_sum)]
    rows += [
        {"task": "caps", "prompt": f"word{i}", "completion": [f"WORD{i}", f"Word{i}"]} for i in range(n_caps)
    ]
    return rows


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---- recognition ----------------------------------------------------------------------------------


def test_format_recognised_by_form_and_forced_by_data_format(tmp_path):
    jsonl = write_jsonl(tmp_path / "mix.jsonl", mix_rows())
    (tmp_path / "mix.csv").write_text("task,prompt,completion\n", encoding="utf-8")
    (tmp_path / "superni" / "task001_a").mkdir(parents=True)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text("{}", encoding="utf-8")
    assert detect_format(jsonl) == "jsonl"
    assert detect_format(tmp_path / "mix.csv") == "csv"
    assert detect_format(tmp_path / "superni") == "superni"
    assert detect_format(saved) == "datasets"
    assert detect_format("someone/some_dataset") == "datasets"  # no such local path: a hub name
    assert detect_format(jsonl, "datasets") == "datasets"
    text = write_jsonl(tmp_path / "rows.txt", mix_rows())
    with pytest.raises(DataError, match=r"rows.txt: cannot tell the format .* set data.format"):
        detect_format(text)
    assert [t.name for t in open_source(text, "jsonl").load("train")] == ["caps", "sum"]
    with pytest.raises(DataError, match="data.format 'yaml' is unknown"):
        detect_format(jsonl, "yaml")
    with pytest.raises(DataError, match="missing.jsonl: no such file or folder"):
        detect_format(tmp_path / "missing.jsonl")


# ---- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_mix_grouped_by_task_with_verbatim_prompts_and_several_answers(tmp_path):
    source = open_source(write_jsonl(tmp_path / "mix.jsonl", mix_rows()))
    assert source.task_names() == ["caps", "sum"]
    train, test = source.load("train"), source.load("test")
    # 10% test, at least one: round(0.1 * 4) = 0 -> 1 for caps, round(0.1 * 10) = 1 for sum
    assert [len(t.instances) for t in test] == [1, 1]
    assert [len(t.instances) for t in train] == [3, 9]
    caps = train[0].instances + test[0].instances
    assert sorted(i.outputs[0] for i in caps) == ["WORD0", "WORD1", "WORD2", "WORD3"]
    assert all(i.outputs == [i.outputs[0], i.outputs[0].capitalize()] for i in caps)
    # the prompt is the row's prompt as written (no task template around it)
    inst = train[1].instances[0]
    assert PromptTemplate().format(train[1], inst) == inst.input == f"{int(inst.outputs[0]) - 1}+1="
    # ids: the row's line in the file (task "sum" starts on line 1)
    assert {i.id for i in train[1].instances + test[1].instances} == {f"sum-{n}" for n in range(1, 11)}


def test_seeded_split_is_per_task_and_follows_the_seed(tmp_path):
    rows = mix_rows(n_sum=30)
    alone = open_source(write_jsonl(tmp_path / "alone.jsonl", rows[:30]), sizes={"test": 5, "seed": 3})
    mixed = open_source(write_jsonl(tmp_path / "mixed.jsonl", rows), sizes={"test": 5, "seed": 3})
    ids = {i.id for i in alone.load("test")[0].instances}
    assert len(ids) == 5 and ids == {i.id for i in mixed.load("test", ["sum"])[0].instances}
    expected = split_indices(30, "sum", SplitSizes(train=None, test=5, seed=3))["test"]
    assert ids == {f"sum-{i + 1}" for i in expected}  # row i is on line i + 1
    other = open_source(tmp_path / "mixed.jsonl", sizes={"test": 5, "seed": 4}).load("test", ["sum"])[0]
    assert {i.id for i in other.instances} != ids
    with pytest.raises(DataError, match="task 'sum' has no dev examples; set data.split_sizes.dev"):
        mixed.load("dev", ["sum"])
    dev = open_source(tmp_path / "mixed.jsonl", sizes={"dev": 0.2}).load("dev", ["sum"])[0]
    assert len(dev.instances) == 6  # round(0.2 * 30)


def test_split_column_is_used_as_given(tmp_path):
    rows = mix_rows(n_sum=4, n_caps=2)
    for row, split in zip(rows, ["train", "train", "validation", "test", "train", "train"]):
        row["split"] = split
    source = open_source(write_jsonl(tmp_path / "split.jsonl", rows))
    assert [i.input for i in source.load("test", ["sum"])[0].instances] == ["3+1="]
    assert [i.input for i in source.load("dev", ["sum"])[0].instances] == ["2+1="]
    with pytest.raises(DataError) as excinfo:
        source.load("test", ["caps"])
    assert one_line_error(excinfo) == (
        f"{tmp_path / 'split.jsonl'}: task 'caps' has no test examples; add test rows for it (column "
        "'split', or the dataset's test split), or drop the split so that test examples are split off "
        "with the seed"
    )


def test_a_file_without_task_column_is_one_task_named_after_it(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    source = open_source(write_jsonl(tmp_path / "qa_pairs.jsonl", rows))
    assert source.task_names() == ["qa_pairs"]
    assert "every row belongs to task 'qa_pairs'" in " ".join(source.notes())


# ---- chat rows ------------------------------------------------------------------------------------


def test_chat_rows_use_the_chat_template_and_train_on_the_last_assistant_turn(tmp_path):
    rows = [
        {
            "task": "brief",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"abcdef{i}"},
                {"role": "assistant", "content": "xy"},
            ],
        }
        for i in range(3)
    ]
    (task,) = open_source(write_jsonl(tmp_path / "chat.jsonl", rows), sizes={"test": 1}).load("train")
    inst = task.instances[0]
    assert (inst.input, inst.outputs) == ("abcdef0", ["xy"])
    assert inst.messages == rows[0]["messages"][:2]
    tokenizer = char_tokenizer()
    with pytest.raises(ValueError, match="need a tokenizer that has a chat template"):
        encode_prompts(tokenizer, [task])
    tokenizer.chat_template = CHAT_TEMPLATE
    # "system: Be brief.\nuser: " is 24 characters, "\nassistant:" 11 (its trailing space moves to the
    # answer): 24 + 11 + 3 = 38 tokens keep the last 3 characters of the input "abcdef0".
    (example, *_) = tokenize_tasks(tokenizer, [task], max_source_length=38, max_target_length=8)
    prompt = [t for t, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX]
    assert tokenizer.decode(prompt) == "system: Be brief.\nuser: ef0\nassistant:"
    answer = [label for label in example["labels"] if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == " xy</s>"


# ---- CSV ------------------------------------------------------------------------------------------


def test_csv_with_renamed_columns_and_a_byte_order_mark(tmp_path):
    text = "category,question,label\n" + "".join(f'cat,"q{i}, with comma",a{i}\n' for i in range(4))
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    with pytest.raises(DataError) as excinfo:
        open_source(path)
    assert one_line_error(excinfo) == (
        f"{path}: missing column 'prompt' (or 'messages' for chat rows); rename the column to 'prompt' "
        "or set data.prompt_column to the right one (columns found: category, question, label)"
    )
    columns = Columns(task="category", prompt="question", answer="label")
    (task,) = open_source(path, columns=columns, sizes={"test": 1}).load("train")
    assert task.name == "cat" and sorted(i.input for i in task.instances)[0] == "q0, with comma"
    assert {i.id for i in task.instances} < {"cat-2", "cat-3", "cat-4", "cat-5"}  # header is line 1


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, message",
    [
        ({"task": "", "prompt": "p", "completion": "c"}, "line 2, column 'task': empty: every row needs"),
        ({"task": "t", "prompt": "p", "completion": " "}, "line 2, column 'completion': empty or missing"),
        ({"task": "t", "prompt": "p"}, "line 2, column 'completion': empty or missing: the answer"),
        (
            {"task": "t", "prompt": "", "completion": "c"},
            "line 2, column 'prompt': empty or missing: the prompt",
        ),
        ({"task": "a b", "prompt": "p", "completion": "c"}, "line 2, column 'task': task name 'a b' is not"),
        (
            {"task": "t", "prompt": "p", "completion": ["a", ""]},
            "line 2, column 'completion': must be a non-empty",
        ),
        (
            {
                "task": "t",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            },
            "line 2, column 'messages': a chat row, but line 1 is a prompt/completion row (mixed formats); "
            "keep one format per file",
        ),
        (
            {"task": "t", "prompt": "p", "completion": "c", "split": "holdout"},
            "line 2, column 'split': 'holdout' is not a split; use one of train, dev, validation",
        ),
    ],
)
def test_bad_rows_name_file_line_column_and_fix(tmp_path, row, message):
    first = {
        "task": "t",
        "prompt": "p0",
        "completion": "c0",
        **({"split": "train"} if "split" in row else {}),
    }
    path = write_jsonl(tmp_path / "bad.jsonl", [first, row])
    with pytest.raises(DataError) as excinfo:
        open_source(path)
    assert one_line_error(excinfo).startswith(f"{path} {message}")


def test_bad_chat_rows_and_files(tmp_path):
    user = {"role": "user", "content": "q"}
    for messages, message in [
        ([user], "needs at least one turn followed by the assistant's answer"),
        ([user, {"role": "assistant", "content": ""}], "the last (assistant) turn is empty"),
        ("hello", "must be a list of {role, content} objects"),
    ]:
        path = write_jsonl(tmp_path / "chat.jsonl", [{"task": "t", "messages": messages}])
        with pytest.raises(
            DataError,
            match=r"chat.jsonl line 1, column 'messages': " + message.replace("(", r"\(").replace(")", r"\)"),
        ):
            open_source(path)
    (tmp_path / "broken.jsonl").write_text('{"task": "t", "prompt": "p", "completion": "c"}\n{"task": \n')
    with pytest.raises(DataError, match=r"broken.jsonl line 2: invalid JSON at column 10"):
        open_source(tmp_path / "broken.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        open_source(tmp_path / "empty.jsonl")
    (tmp_path / "wide.csv").write_text("task,prompt,completion\nt,p,c,extra\n")
    with pytest.raises(DataError, match="wide.csv line 2: 4 fields but the header names 3"):
        open_source(tmp_path / "wide.csv")
    many = [{"task": "t", "prompt": "p", "completion": ""}] * 3
    with pytest.raises(
        DataError, match=r"line 1, .* \(and 2 more problems: `badit data check .*` lists them\)"
    ):
        open_source(write_jsonl(tmp_path / "many.jsonl", many))
    with pytest.raises(
        DataError, match=r"no rows for task 'nope'; check data.tasks \(tasks found: caps, sum\)"
    ):
        open_source(write_jsonl(tmp_path / "mix.jsonl", mix_rows())).load("train", ["nope"])
    with pytest.raises(DataError, match=r"task 'one': 1 instances, but test \(1\) \+ dev \(0\) leave none"):
        open_source(
            write_jsonl(tmp_path / "one.jsonl", [{"task": "one", "prompt": "p", "completion": "c"}])
        ).load("train")


# ---- datasets -------------------------------------------------------------------------------------


def test_in_memory_dataset_split_by_its_task_column():
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {
            "text": [f"t{i}" for i in range(12)],
            "label": [f"l{i}" for i in range(12)],
            "kind": ["even", "odd"] * 6,
            "other": list(range(12)),
        }
    )
    columns = Columns(task="kind", prompt="text", answer="label")
    source = source_from_dataset(data, "mine", columns, sizes={"test": 2})
    test = source.load("test")
    assert [t.name for t in test] == ["even", "odd"] and [len(t.instances) for t in test] == [2, 2]
    train = source.load("train")
    assert sorted(int(i.input[1:]) % 2 for i in train[1].instances) == [1, 1, 1, 1]
    assert all(i.outputs == ["l" + i.input[1:]] for t in train for i in t.instances)
    with pytest.raises(
        DataError, match=r"mine: missing column 'prompt' .* \(columns found: text, label, kind"
    ):
        source_from_dataset(data, "mine", Columns(task="kind"))


@pytest.mark.slow  # datasets builds arrow files and imports pandas: ~10 s
def test_saved_dataset_dict_keeps_its_splits_and_data_files_load_through_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))

    def part(n, start):
        return datasets.Dataset.from_dict(
            {
                "task": ["qa"] * n,
                "prompt": [f"q{i}" for i in range(start, start + n)],
                "completion": ["a"] * n,
            }
        )

    datasets.DatasetDict({"train": part(5, 0), "validation": part(2, 5), "test": part(3, 7)}).save_to_disk(
        tmp_path / "saved"
    )
    source = open_source(tmp_path / "saved")
    assert source.format == "datasets"
    counts = {split: [i.input for i in source.load(split)[0].instances] for split in ("train", "dev", "test")}
    assert counts == {
        "train": ["q0", "q1", "q2", "q3", "q4"],
        "dev": ["q5", "q6"],
        "test": ["q7", "q8", "q9"],
    }
    assert source.load("test")[0].instances[0].id == "qa-test-0"
    report, ok = check_data(tmp_path / "saved")
    assert ok and report.splitlines()[2].split() == ["qa", "5", "2", "3"]

    write_jsonl(tmp_path / "mix.json", mix_rows())
    via_datasets = open_source(tmp_path / "mix.json")
    direct = open_source(write_jsonl(tmp_path / "mix.jsonl", mix_rows()))
    for split in ("train", "test"):
        a, b = via_datasets.load(split), direct.load(split)
        assert [[(i.input, i.outputs) for i in t.instances] for t in a] == [
            [(i.input, i.outputs) for i in t.instances] for t in b
        ]
    with pytest.raises(DataError, match=r"nowhere/at_all: datasets could not load it .* check data.path"):
        open_source("nowhere/at_all", "datasets")


# ---- data check ------------------------------------------------------------------------------------


def test_data_check_reports_counts_and_every_bad_row(tmp_path):
    rows = mix_rows()
    rows[2]["completion"] = ""
    rows[5]["task"] = None
    path = write_jsonl(tmp_path / "mix.jsonl", rows)
    out = io.StringIO()
    assert run_data_check(path, out) == 1
    report = out.getvalue()
    lines = report.splitlines()
    assert lines[0] == f"{path} (jsonl, 12 valid rows)"
    assert [line.split() for line in lines[1:4]] == [
        ["task", "train", "test"],
        ["caps", "3", "1"],
        ["sum", "7", "1"],
    ]
    assert "2 tasks, 2 problems" in report
    assert f"problem: {path} line 3, column 'completion': empty or missing" in report
    assert f"problem: {path} line 6, column 'task': empty" in report
    report, ok = check_data(write_jsonl(tmp_path / "good.jsonl", mix_rows()), {"test": 2})
    assert ok and ["sum", "8", "2"] in [line.split() for line in report.splitlines()]


def test_cli_data_check_with_column_names_and_sizes(tmp_path, capsys):
    from badit.cli.main import main

    path = tmp_path / "own.csv"
    path.write_text("kind,question,label\n" + "".join(f"k,q{i},a{i}\n" for i in range(8)), encoding="utf-8")
    args = ["data", "check", str(path), "--task-column", "kind", "--prompt-column", "question"]
    assert main([*args, "--answer-column", "label", "--test-size", "0.25", "--dev-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["task", "train", "dev", "test"]
    assert lines[2].split() == ["k", "4", "2", "2"]  # test: round(0.25 * 8) = 2, dev 2, train the other 4
    assert main(args) == 1  # the answer column is still 'completion'
    out = capsys.readouterr().out
    assert "missing column 'completion'; rename the column to 'completion' or set data.answer_column" in out
