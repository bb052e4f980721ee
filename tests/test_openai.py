"""A chat model served the way vLLM users expect: the real `openai` client against a running
`tuneledger serve`, chat and streaming included, with the signature's messages input enforced.

The module trains the bundled chat task (the tiny GPT-2 with a chatml template) once, registers it
as v1.0.0 in prod, and serves it with an API key and itself as the shadow.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import httpx
import pytest

from conftest import commit_all, copy_repo, run, serving, use_remote
from tuneledger.package import signature
from tuneledger.serve.log import DEFAULT_DB

KEY = "chat-key-0123456789"
QUESTION = [{"role": "user", "content": "reverse: red cat sun"}]
ANSWER = "sun cat red"


@pytest.fixture(scope="module")
def chat_served(chat_run, s3, tmp_path_factory):
    """The built-in chat task (ChatML on the tiny base) registered as v1.0.0 in prod, served with an
    API key and with prod as its own shadow."""
    repo = copy_repo(chat_run, tmp_path_factory.mktemp("chat-serve") / "repo")  # trained once, in conftest
    use_remote(repo, s3, "chat-serve")
    commit_all(repo, "a chat model")
    run("tuneledger", "register", "--push", cwd=repo)
    # Tuned to reverse words in chats, it copies fewer of them than its base (copy_words, through
    # ChatML): the gate's forgetting check refuses it; these tests serve it.
    run(
        "tuneledger", "promote", "v1.0.0", "--stage", "prod", "--force", "--reason", "serving tests", cwd=repo
    )
    with serving(repo, "--shadow", "prod", api_key=KEY) as server:
        url = server.url
        version = httpx.get(f"{url}/version", headers={"Authorization": f"Bearer {KEY}"}).json()
        yield {"repo": repo, "url": url, "db": repo / DEFAULT_DB, "content_id": version["content_id"]}


@pytest.fixture
def client(chat_served):
    from openai import OpenAI

    with OpenAI(base_url=f"{chat_served['url']}/v1", api_key=KEY, max_retries=0, timeout=60) as openai_client:
        yield openai_client


def test_chat_completion_from_the_openai_client(client, chat_served):
    reply = client.chat.completions.create(model="lora-adapter", messages=QUESTION)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip() == ANSWER
    assert choice.finish_reason == "stop"  # ended at the template's end-of-turn token
    assert reply.model == "lora-adapter@v1.0.0" and reply.system_fingerprint == chat_served["content_id"]
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model_extra["tuneledger"]["version"] == "v1.0.0"


def test_streamed_chat_completion_from_the_openai_client(client, chat_served):
    chunks = list(
        client.chat.completions.create(
            model="lora-adapter@v1.0.0",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    assert {c.model for c in chunks} == {"lora-adapter@v1.0.0"}
    assert {c.system_fingerprint for c in chunks} == {chat_served["content_id"]}


def test_raw_stream_is_server_sent_events_ending_with_done(chat_served):
    with httpx.stream(
        "POST",
        f"{chat_served['url']}/v1/chat/completions",
        json={"model": "lora-adapter", "messages": QUESTION, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["X-TuneLedger-Version"] == "v1.0.0"
        events = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_completions_and_models(client, chat_served):
    completion = client.completions.create(model="lora-adapter", prompt="reverse: red cat sun", max_tokens=4)
    assert completion.model == "lora-adapter@v1.0.0" and completion.choices[0].finish_reason in (
        "stop",
        "length",
    )
    assert completion.usage.completion_tokens <= 4
    streamed = list(
        client.completions.create(model="lora-adapter", prompt="reverse: a b", max_tokens=4, stream=True)
    )
    assert streamed and all(c.model == "lora-adapter@v1.0.0" for c in streamed)
    listed = {m.id: m.tuneledger["version"] for m in client.models.list()}
    assert listed == {
        "lora-adapter": "v1.0.0",
        "lora-adapter@prod": "v1.0.0",
        "lora-adapter@v1.0.0": "v1.0.0",
    }


def test_stop_strings_cut_the_answer(client):
    reply = client.chat.completions.create(model="lora-adapter", messages=QUESTION, stop=[" cat"])
    assert reply.choices[0].message.content == "sun" and reply.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(model="lora-adapter", messages=QUESTION, stop=" cat", stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "sun"


def test_wrong_or_missing_key_gets_401(chat_served):
    from openai import AuthenticationError, OpenAI

    wrong = OpenAI(base_url=f"{chat_served['url']}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(AuthenticationError):
        wrong.chat.completions.create(model="lora-adapter", messages=QUESTION)
    missing = httpx.post(
        f"{chat_served['url']}/v1/chat/completions", json={"model": "lora-adapter", "messages": QUESTION}
    )
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 300}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 65}, "messages"),
        ({"max_tokens": 1000}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 3.0}, "temperature"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_requests_get_422_naming_the_field(client, change, field):
    from openai import UnprocessableEntityError

    request = {"model": "lora-adapter", "messages": QUESTION, **change}
    with pytest.raises(UnprocessableEntityError) as refused:
        client.chat.completions.create(
            **{k: v for k, v in request.items() if k in ("model", "messages")},
            extra_body={k: v for k, v in request.items() if k not in ("model", "messages")},
        )
    error = refused.value.body
    assert error["param"].startswith(field) and error["code"] == 422, error
    assert error["message"].startswith(error["param"])


def test_an_unknown_model_gets_404(client):
    from openai import NotFoundError

    with pytest.raises(NotFoundError, match="lora-adapter@STAGE, lora-adapter@vX.Y.Z"):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)


def test_chat_requests_are_shadowed_and_every_status_is_logged(client, chat_served):
    from openai import UnprocessableEntityError

    for _ in range(3):
        client.chat.completions.create(model="lora-adapter", messages=QUESTION)
    with pytest.raises(UnprocessableEntityError):
        client.chat.completions.create(model="lora-adapter", messages=[{"role": "tool", "content": "x"}])
    db = sqlite3.connect(chat_served["db"])
    deadline = time.monotonic() + 60
    while True:
        pairs = db.execute(
            "SELECT exact_agreement, prompt_sha256, prompt FROM shadow_pairs WHERE error IS NULL"
        ).fetchall()
        statuses = {
            s for (s,) in db.execute("SELECT status FROM requests WHERE path = '/v1/chat/completions'")
        }
        refused = {s for (s,) in db.execute("SELECT status FROM refusals")}  # counted before any route
        if len(pairs) >= 3 and {200, 422} <= statuses and 401 in refused:
            break
        assert time.monotonic() < deadline, (pairs, statuses)
        time.sleep(0.3)
    assert all(agree == 1 and len(digest) == 64 and prompt is None for agree, digest, prompt in pairs)
    report = json.loads(
        run(
            "tuneledger", "shadow-report", "--db", chat_served["db"], "--json", cwd=chat_served["repo"]
        ).stdout
    )
    assert report["exact_agreement"] == 1.0


def test_the_signature_describes_messages(chat_served):
    sig = json.loads((chat_served["repo"] / "models/export/signature.json").read_text())
    messages = sig["inputs"]["messages"]
    assert messages["items"]["role"]["enum"] == ["system", "user", "assistant"]
    assert messages["max_items"] >= 1 and messages["max_tokens"] > 0 and messages["required"] is False


def test_generate_renders_messages_from_a_file_or_stdin(chat_served, tmp_path):
    repo = chat_served["repo"]
    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps(QUESTION))
    assert (
        run("tuneledger", "generate", "models/export", "--messages", conversation, cwd=repo).stdout.strip()
        == ANSWER
    )
    piped = subprocess.run(
        ["tuneledger", "generate", "models/export", "--messages", "-"],
        input=json.dumps({"messages": QUESTION}),
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert piped.returncode == 0 and piped.stdout.strip() == ANSWER
    conversation.write_text(json.dumps([{"role": "robot", "content": "hi"}]))
    bad = run("tuneledger", "generate", "models/export", "--messages", conversation, cwd=repo, check=False)
    assert bad.returncode == 1 and "messages.0.role" in bad.stderr and "Traceback" not in bad.stderr
    both = run(
        "tuneledger", "generate", "models/export", "hi", "--messages", conversation, cwd=repo, check=False
    )
    assert both.returncode == 1 and "one of them" in both.stderr


# --- the signature's messages input, on its own --------------------------------------------------
def chat_signature(**changes) -> dict:
    built = signature.build(
        max_prompt_chars=256,
        max_prompt_tokens=96,
        max_new_tokens=32,
        default_new_tokens=8,
        conversational=True,
    )
    built["inputs"]["messages"].update(changes)
    return built


def test_a_chat_candidate_may_replace_a_plain_version_but_not_the_reverse():
    plain = signature.build(
        max_prompt_chars=256, max_prompt_tokens=96, max_new_tokens=32, default_new_tokens=8
    )
    assert "messages" not in plain["inputs"]
    assert signature.incompatibilities(plain, chat_signature()) == []
    assert signature.incompatibilities(chat_signature(), plain) == ["inputs.messages: removed"]


def test_narrowing_the_messages_input_is_breaking():
    current = chat_signature()
    narrowed = chat_signature(
        max_items=4, items={"role": {"type": "string", "enum": ["user"]}, "content": {"type": "string"}}
    )
    problems = signature.incompatibilities(current, narrowed)
    assert "inputs.messages: max_items lowered 64 → 4" in problems
    assert "inputs.messages.role: no longer accepts assistant, system" in problems


def test_messages_are_checked_against_the_signature():
    sig = chat_signature()
    signature.check_messages(sig, [{"role": "system", "content": "be brief"}, *QUESTION])
    with pytest.raises(
        signature.SignatureViolation, match=r"messages.1.role: must be one of system, user, assistant"
    ):
        signature.check_messages(sig, [QUESTION[0], {"role": "tool", "content": "x"}])
    with pytest.raises(
        signature.SignatureViolation, match="messages.0: must be an object with role and content"
    ):
        signature.check_messages(sig, [{"role": "user", "content": "x", "name": "bob"}])
