"""One server, the registry's versions: resident as adapters on one base, named by the `model`
field, batched together, split by a canary, following stage moves. The real server, the real
`openai` client, the registry's real versions (v1.0.0 rank 8, v1.1.0 rank 4, and versions
registered from them without training: other LoRA B weights, or another recorded base)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from conftest import copy_repo, read_json, register_forged_version, run, serving, set_params
from tuneledger.core.faults import FAULT_VARIABLE
from tuneledger.serve import routing
from tuneledger.serve.log import DEFAULT_DB

KEY = "fleet-key-0123456789abcdef"
SYNC_SECONDS = 2.0
CANARY_PERCENT = 30
USERS = 200  # distinct canary keys: the share over them is checked against binomial bounds
EXPLODING = "reverse: boom =>"
# Prompts off the training task, where the versions' adapters answer differently, and on it.
PROMPTS = ["hello world", "the quick brown fox", "reverse: zebra lion =>", "a", "reverse: red cat sun =>"]


@pytest.fixture(scope="module")
def fleet(registry, tmp_path_factory):
    """prod v1.0.0, staging v1.1.0 as a 30% canary, v1.2.0 and v1.3.0 (LoRA B x0.5 and x-1 of
    v1.1.0), v1.4.0 recording another base; served with at most 3 resident versions."""
    repo = copy_repo(registry[0], tmp_path_factory.mktemp("fleet") / "repo")
    scored = {  # what evaluate scored for v1.1.0, the workspace's run, before other versions replace it
        "answers": read_json(repo / "results/evaluate/answers.json"),
        "rows": [json.loads(line) for line in (repo / "data/prepared/test.jsonl").read_text().splitlines()],
        "max_new_tokens": read_json(repo / "models/export/metadata.json")["params"]["eval"]["max_new_tokens"],
    }
    run("tuneledger", "promote", "v1.1.0", "--stage", "staging", cwd=repo)
    versions = {
        "half": register_forged_version(repo, 0.5),
        "negated": register_forged_version(repo, -2.0),
        "foreign": register_forged_version(repo, 0.9, base_sha256="f" * 64),
    }
    args = [
        "--max-versions",
        "3",
        "--canary",
        f"staging:{CANARY_PERCENT}",
        "--sync-seconds",
        str(SYNC_SECONDS),
    ]
    with serving(repo, *args, api_key=KEY, env={FAULT_VARIABLE: f"serve.generate:{EXPLODING}"}) as server:
        yield {"repo": repo, "url": server.url, "versions": versions, "scored": scored}


def client(fleet):
    from openai import OpenAI

    return OpenAI(base_url=f"{fleet['url']}/v1", api_key=KEY, max_retries=0, timeout=120)


def state(fleet) -> dict:
    return httpx.get(f"{fleet['url']}/version", headers={"Authorization": f"Bearer {KEY}"}).json()


def resident(fleet) -> set[str]:
    return {r["version"] for r in state(fleet)["resident"]}


def batches(fleet) -> float:
    metrics = httpx.get(f"{fleet['url']}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("tuneledger_batch_size_count")
        )
    )


def complete(fleet, model: str, prompt: str, max_tokens: int = 12, stream: bool = False, **extra):
    api = client(fleet)
    if not stream:
        reply = api.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, **extra
        )
        return reply.choices[0].text, reply.model, reply.system_fingerprint
    chunks = list(
        api.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True, **extra
        )
    )
    return (
        "".join(c.choices[0].text for c in chunks if c.choices),
        chunks[0].model,
        chunks[0].system_fingerprint,
    )


def test_each_name_form_reaches_its_version_and_every_reply_names_it(fleet):
    half = fleet["versions"]["half"]
    models = {card.id: card for card in client(fleet).models.list()}
    assert models["lora-adapter"].tuneledger["version"] == "v1.0.0"
    assert models["lora-adapter@prod"].tuneledger["version"] == "v1.0.0"
    assert models["lora-adapter@staging"].tuneledger["version"] == "v1.1.0"
    half_id = json.loads(
        run("git", "show", f"lora-adapter@{half}:models/export.manifest.json", cwd=fleet["repo"]).stdout
    )["content_id"]
    for name, version in [
        ("lora-adapter@prod", "v1.0.0"),
        ("lora-adapter@staging", "v1.1.0"),
        (f"lora-adapter@{half}", half),
        (half_id[:10], half),
    ]:
        _, model, fingerprint = complete(fleet, name, PROMPTS[0])
        assert model == f"lora-adapter@{version}"
        assert (fingerprint == half_id) == (version == half)
    listed = {card.id: card.tuneledger for card in client(fleet).models.list()}
    assert listed[f"lora-adapter@{half}"] == {
        "name": "lora-adapter",
        "stage": None,
        "version": half,
        "content_id": half_id,
        "arm": None,
    }


def test_an_unknown_name_gets_404_in_openai_shape_and_loads_nothing(fleet):
    from openai import NotFoundError

    loads = state(fleet)["loads"]
    for name in ["nope", "lora-adapter@v9.9.9", "lora-adapter@dev", "0123456789abcdef", "other@prod"]:
        with pytest.raises(NotFoundError) as refused:
            complete(fleet, name, PROMPTS[0])
        error = refused.value.body
        assert error["type"] == "not_found_error" and error["param"] == "model"
    assert state(fleet)["loads"] == loads


def test_three_versions_in_one_batch_answer_as_each_alone(fleet):
    """Greedy answers, mixed versions, prompt lengths, max_tokens, streamed and not: batched equals
    alone, and each version answers as itself (the three answer sets differ)."""
    versions = ["v1.0.0", "v1.1.0", fleet["versions"]["negated"]]
    jobs = [
        (f"lora-adapter@{v}", prompt, 3 + 5 * (i % 3), i % 2 == 0)
        for v in versions
        for i, prompt in enumerate(PROMPTS)
    ]
    alone = {job: complete(fleet, *job)[0] for job in jobs}
    before = batches(fleet)
    start = threading.Barrier(len(jobs))

    def together(job):
        start.wait()
        return complete(fleet, *job)[0]

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        batched = dict(zip(jobs, pool.map(together, jobs), strict=True))
    assert batched == alone
    assert batches(fleet) - before < len(jobs) / 2  # they really shared batches
    answers = {v: tuple(alone[job] for job in jobs if job[0].endswith(v)) for v in versions}
    assert len(set(answers.values())) == 3


def test_the_server_answers_what_evaluate_scored(fleet):
    """One decoding path: a sample of the test rows, sent concurrently (so batched) to v1.1.0,
    get exactly the answers evaluate scored for exact match."""
    scored = fleet["scored"]
    sample = scored["answers"][::7]
    assert len(sample) >= 10

    def ask(scored_row):
        prompt = scored["rows"][scored_row["row"]]["prompt"]
        return complete(fleet, "lora-adapter@v1.1.0", prompt, scored["max_new_tokens"])[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(ask, sample))
    assert served == [row["answer"] for row in sample]
    assert any(row["hit"] for row in sample)


def test_the_least_recently_used_version_is_unloaded_beyond_max_versions(fleet):
    half, negated = fleet["versions"]["half"], fleet["versions"]["negated"]
    complete(fleet, f"lora-adapter@{half}", PROMPTS[0])
    first = complete(fleet, f"lora-adapter@{negated}", PROMPTS[0])[0]
    assert resident(fleet) == {"v1.0.0", "v1.1.0", negated}  # prod and the canary are kept
    before = state(fleet)
    assert complete(fleet, f"lora-adapter@{half}", PROMPTS[0])[0] is not None
    after = state(fleet)
    assert resident(fleet) == {"v1.0.0", "v1.1.0", half}
    assert (after["loads"], after["evictions"]) == (before["loads"] + 1, before["evictions"] + 1)
    assert complete(fleet, f"lora-adapter@{negated}", PROMPTS[0])[0] == first  # reloaded, same answer


def test_a_version_of_another_base_is_refused_with_one_line(fleet):
    from openai import ConflictError

    before = resident(fleet)
    with pytest.raises(ConflictError) as refused:
        complete(fleet, f"lora-adapter@{fleet['versions']['foreign']}", PROMPTS[0])
    message = refused.value.body["message"]
    assert "trained on base" in message and "ffffffffffff" in message and "\n" not in message
    assert resident(fleet) == before
    assert complete(fleet, "lora-adapter@prod", PROMPTS[0])[1] == "lora-adapter@v1.0.0"


def test_the_canary_share_is_binomial_and_each_key_keeps_its_arm(fleet):
    users = [f"user-{i}" for i in range(USERS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(lambda u: complete(fleet, "lora-adapter", PROMPTS[4], 4, user=u)[1], users))
        again = list(pool.map(lambda u: complete(fleet, "lora-adapter", PROMPTS[4], 4, user=u)[1], users))
    assert first == again  # sticky per user
    canary = first.count("lora-adapter@v1.1.0")
    assert set(first) == {"lora-adapter@v1.0.0", "lora-adapter@v1.1.0"}
    share = CANARY_PERCENT / 100
    spread = 4 * (USERS * share * (1 - share)) ** 0.5  # four standard deviations
    assert abs(canary - USERS * share) <= spread
    assert [v == "lora-adapter@v1.1.0" for v in first] == [
        routing.in_canary(u, CANARY_PERCENT) for u in users
    ]
    headers = {"Authorization": f"Bearer {KEY}", "X-TuneLedger-Session": "session-7"}
    seen = {
        httpx.post(f"{fleet['url']}/generate", json={"prompt": PROMPTS[4]}, headers=headers).json()["version"]
        for _ in range(6)
    }
    assert len(seen) == 1
    db = sqlite3.connect(fleet["repo"] / DEFAULT_DB)
    arms = dict(
        db.execute("SELECT arm, COUNT(*) FROM requests WHERE arm IS NOT NULL GROUP BY arm").fetchall()
    )
    assert arms["canary"] >= 2 * canary and arms["stable"] >= 2 * (USERS - canary)


def canary_users(count: int, in_canary: bool = True) -> list[str]:
    return [
        u
        for u in (f"probe-{i}" for i in range(10 * count))
        if routing.in_canary(u, CANARY_PERCENT) == in_canary
    ][:count]


def promote_with_canary(fleet, *extra: str):
    return run(
        "tuneledger", "promote", "v1.1.0", "--stage", "prod", "--require-canary", *extra,
        cwd=fleet["repo"], check=False,
    )  # fmt: skip


def test_canary_report_and_promote_require_canary(fleet):
    repo = fleet["repo"]
    report = json.loads(run("tuneledger", "canary-report", "--json", cwd=repo).stdout)["arms"]
    assert report["canary"]["versions"] == ["v1.1.0"] and report["stable"]["versions"] == ["v1.0.0"]
    assert report["canary"]["errors"] == 0 and report["canary"]["latency_ms"]["p95"] > 0
    set_params(repo, **{"registry.canary_min_requests": 100_000})
    refused = promote_with_canary(fleet)
    assert refused.returncode != 0 and "100000 canary requests needed" in refused.stderr
    # Server errors on the canary arm only: refused on the error rate, whatever the latency.
    set_params(repo, **{"registry.canary_min_requests": 20, "registry.canary_max_latency_increase": 100})
    for user in canary_users(10):
        reply = httpx.post(
            f"{fleet['url']}/generate",
            json={"prompt": EXPLODING, "user": user},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert reply.status_code == 500
    refused = promote_with_canary(fleet)
    assert refused.returncode != 0 and "error rate" in refused.stderr
    # From a time after the errors, with canary traffic again, the same check passes.
    mark = datetime.now(UTC).isoformat(timespec="seconds")
    time.sleep(1.1)
    for user in canary_users(25) + canary_users(25, in_canary=False):
        complete(fleet, "lora-adapter", PROMPTS[4], 4, user=user)
    passed = promote_with_canary(fleet, "--since", mark)
    assert passed.returncode == 0, passed.stderr
    assert "canary" in passed.stdout and "pass" in passed.stdout


def test_promote_and_rollback_are_live_within_the_sync_period_without_a_download(fleet):
    """v1.1.0 took prod in the test above; the server follows without a restart. The rollback
    brings back v1.0.0, still resident: nothing is fetched or loaded."""
    url, headers = fleet["url"], {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + SYNC_SECONDS + 30
    while httpx.get(f"{url}/health").json()["version"] != "v1.1.0":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    loads = state(fleet)["loads"]
    run(
        "tuneledger",
        "rollback",
        "--stage",
        "prod",
        "--reason",
        "canary looked fine, prod did not",
        cwd=fleet["repo"],
    )
    moved = time.monotonic()
    while httpx.get(f"{url}/health").json()["version"] != "v1.0.0":
        assert time.monotonic() - moved <= SYNC_SECONDS + 1.0, (
            "the rollback was not live within the sync period"
        )
        time.sleep(0.05)
    assert state(fleet)["loads"] == loads
    reply = httpx.post(
        f"{url}/generate", json={"prompt": PROMPTS[4], "user": canary_users(1, False)[0]}, headers=headers
    )
    assert reply.json()["version"] == "v1.0.0"
    events = (
        sqlite3.connect(fleet["repo"] / DEFAULT_DB)
        .execute("SELECT event, version FROM events WHERE role = 'prod' ORDER BY time")
        .fetchall()
    )
    assert events[-2:] == [("swap", "v1.1.0"), ("swap", "v1.0.0")]
