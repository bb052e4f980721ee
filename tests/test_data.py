"""Datasets: built-in tasks are deterministic; a user's broken JSONL fails as `file:line: what`."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run, set_params
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.params import DataParams
from tuneledger.models import data, tasks


def write(tmp_path, content: bytes | str, name="rows.jsonl"):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_builtin_task_has_exact_answers_and_is_seeded():
    rows = tasks.generate("reverse", 50, seed=3)
    assert rows == tasks.generate("reverse", 50, seed=3)
    assert rows != tasks.generate("reverse", 50, seed=4)
    assert rows[0]["prompt"].startswith("reverse: ") and rows[0]["prompt"].endswith(" =>")
    words = rows[0]["prompt"].removeprefix("reverse: ").removesuffix(" =>").split()
    assert rows[0]["completion"] == " " + " ".join(reversed(words))
    assert len({r["prompt"] for r in rows}) == 50


def test_splits_are_deterministic_and_disjoint():
    rows = tasks.generate("reverse", 200, seed=0)
    params = DataParams(val_fraction=0.1, test_fraction=0.2)
    first, again = data.split(rows, params, seed=7), data.split(rows, params, seed=7)
    assert first == again and first != data.split(rows, params, seed=8)
    assert [len(first[s]) for s in data.SPLITS] == [140, 20, 40]
    prompts = [r["prompt"] for s in data.SPLITS for r in first[s]]
    assert len(set(prompts)) == 200


def test_reads_prompt_completion_and_text_rows(tmp_path):
    pc = write(
        tmp_path, '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d", "id": 3}\n'
    )
    assert data.read_jsonl(pc) == [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    text = write(tmp_path, '\ufeff{"text": "hello"}\n', "text.jsonl")  # a BOM on the first line is accepted
    assert data.read_jsonl(text) == [{"text": "hello"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', ":2: not valid JSON"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', ":2: missing field 'completion'"),
        ('{"prompt": "a", "completion": "b"}\n{"text": "a"}\n', ":2: missing field 'prompt'"),
        ('{"prompt": "a", "completion": 3}\n', ":1: field 'completion' must be a string, got int"),
        ("[1, 2]\n", ":1: expected a JSON object, got list"),
        ('{"text": ""}\n', ":1: text empty"),
        (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', ":2: not UTF-8"),
        ("", ": no rows (the file is empty)"),
        ("\n\n", ": no rows (the file is empty)"),
    ],
)
def test_broken_lines_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(TuneLedgerError) as refused:
        data.read_jsonl(path)
    assert str(refused.value).startswith(str(path)) and message in str(refused.value)


def test_unknown_builtin_and_missing_file_are_named():
    with pytest.raises(TuneLedgerError, match="unknown built-in task 'builtin:nope'"):
        data.load_source(DataParams(source="builtin:nope"), 0)
    with pytest.raises(TuneLedgerError, match="data.source: missing.jsonl not found"):
        data.load_source(DataParams(source="missing.jsonl"), 0)


def test_broken_dataset_line_stops_prepare_and_keeps_outputs(trained_repo):
    rows = [json.dumps({"prompt": f"q{i}", "completion": f" a{i}"}) for i in range(10)]
    rows[6] = '{"prompt": "q6", "completion": '
    (trained_repo / "data/raw/mine.jsonl").write_text("\n".join(rows) + "\n")
    set_params(trained_repo, **{"data.source": "data/raw/mine.jsonl"})
    before = (trained_repo / "data/prepared/train.jsonl").read_bytes()
    failed = run("dvc", "repro", cwd=trained_repo, check=False)
    assert failed.returncode != 0
    assert "error: data/raw/mine.jsonl:7: not valid JSON" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert (trained_repo / "data/prepared/train.jsonl").read_bytes() == before
    assert (trained_repo / "models/base/model.safetensors").is_file()


CHAT = {
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "reverse: red cat"},
        {"role": "assistant", "content": "cat red"},
        {"role": "user", "content": "reverse: sun owl"},
        {"role": "assistant", "content": "owl sun"},
    ]
}
CHAT_PC = {
    "prompt": [{"role": "user", "content": "reverse: red cat"}],
    "completion": [{"role": "assistant", "content": "cat red"}],
}


def test_reads_trl_conversational_formats(tmp_path):
    extra = {**CHAT, "id": 7, "messages": [*CHAT["messages"][:-1], {**CHAT["messages"][-1], "name": "x"}]}
    messages = write(tmp_path, json.dumps(extra) + "\n" + json.dumps(CHAT) + "\n")
    assert data.read_jsonl(messages) == [CHAT, CHAT]  # only role and content are kept
    prompt_completion = write(tmp_path, json.dumps(CHAT_PC) + "\n", "pc.jsonl")
    assert data.read_jsonl(prompt_completion) == [CHAT_PC]
    assert data.is_conversational([CHAT]) and not data.is_conversational([{"text": "x"}])


def _turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": _turns(("user", "a"), ("bot", "b"))}, ":1: messages[1].role: unknown role 'bot'"),
        (
            {"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]},
            ":1: messages[0].content: must be a string, got list",
        ),
        ({"messages": _turns(("system", "s"), ("user", "a"))}, ":1: messages: no assistant turn"),
        ({"messages": []}, ":1: messages must be a non-empty list of turns"),
        ({"messages": ["hi"]}, ":1: messages[0]: expected an object with role and content, got str"),
        (
            {**CHAT_PC, "completion": _turns(("user", "b"))},
            ":1: completion must be exactly one assistant turn",
        ),
        ({**CHAT_PC, "prompt": "reverse: red cat"}, ":1: prompt must be a non-empty list of turns"),
    ],
)
def test_bad_conversations_name_file_line_and_turn(tmp_path, row, message):
    path = write(tmp_path, json.dumps(row) + "\n")
    with pytest.raises(TuneLedgerError) as refused:
        data.read_jsonl(path)
    assert str(refused.value).startswith(str(path)) and message in str(refused.value)


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (
            CHAT,
            {"prompt": "a", "completion": "b"},
            ":2: missing field 'messages' (mixed formats: this row is ",
        ),
        ({"prompt": "a", "completion": "b"}, CHAT_PC, ":2: mixed formats: this row is conversational"),
        (CHAT_PC, CHAT, ":2: missing field 'prompt' (mixed formats: this row is messages"),
    ],
)
def test_mixed_formats_in_one_file_are_refused(tmp_path, first, second, message):
    path = write(tmp_path, json.dumps(first) + "\n" + json.dumps(second) + "\n")
    with pytest.raises(TuneLedgerError, match=None) as refused:
        data.read_jsonl(path)
    assert message in str(refused.value)


def test_builtin_chat_task_is_the_same_task_as_messages():
    plain, chats = tasks.generate("reverse", 20, seed=1), tasks.BUILTIN_TASKS["reverse-words-chat"](20, 1)
    for row, conversation in zip(plain, chats, strict=True):
        user, reply = conversation["messages"]
        assert user == {"role": "user", "content": row["prompt"].removesuffix(" =>")}
        assert reply == {"role": "assistant", "content": row["completion"].strip()}


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path):
    """A datasets cache holding `acme/chats` at COMMIT, laid out as an online load leaves it."""
    from datasets import load_dataset_builder

    rows = tmp_path / "chats.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in tasks.generate_chat("reverse", 40, 0)))
    builder = load_dataset_builder("json", data_files={"train": str(rows)}, cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    entry = tmp_path / "cache" / "acme___chats" / "default" / "0.0.0" / COMMIT
    shutil.copytree(builder.cache_dir, entry)
    (entry / "json-train.arrow").rename(entry / "chats-train.arrow")
    info = json.loads((entry / "dataset_info.json").read_text())
    (entry / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default"}))
    return tmp_path / "cache"


def test_a_hub_dataset_is_prepared_offline_and_pinned(trained_repo, tiny_base_dir, hub_cache):
    offline = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(hub_cache)}
    set_params(
        trained_repo,
        **{"model.base": str(tiny_base_dir), "model.chat_template": "chatml"},
        **{"data.source": "hub:acme/chats", "data.revision": COMMIT, "data.split": "train"},
    )
    run("dvc", "repro", "prepare", cwd=trained_repo, env=offline)
    origin = json.loads((trained_repo / "data/prepared/origin.json").read_text())
    assert origin == {
        "source": "hub:acme/chats",
        "revision": COMMIT,
        "commit": COMMIT,
        "config": None,
        "split": "train",
    }
    prepared = [
        json.loads(line) for s in data.SPLITS for line in (trained_repo / f"data/prepared/{s}.jsonl").open()
    ]
    assert len(prepared) == 40 and all("messages" in row for row in prepared)

    set_params(trained_repo, **{"data.revision": "f" * 40})
    failed = run("dvc", "repro", "prepare", cwd=trained_repo, env=offline, check=False)
    assert (
        f"error: data.revision: acme/chats resolved to {COMMIT}, not the pinned {'f' * 40}" in failed.stderr
    )
    set_params(trained_repo, **{"data.revision": COMMIT, "data.split": "test"})
    failed = run("dvc", "repro", "prepare", cwd=trained_repo, env=offline, check=False)
    assert "error: data.split: acme/chats has no split 'test' (it has train)" in failed.stderr
    assert json.loads((trained_repo / "data/prepared/origin.json").read_text())["commit"] == COMMIT
