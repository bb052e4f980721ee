"""The registry reads its state in one pass and writes tags in gto's format: gto, `gto check-ref`
and `dvc artifacts get --stage` agree with it, at two versions and at a long history.
(How long each command takes at 10, 100 and 1,000 versions is in `make bench`.)"""

from __future__ import annotations

import json
import time

from conftest import read_json, run
from registry_history import NAME, write_history
from tuneledger.registry import tags


def gto_holder(repo, stage: str) -> str:
    return run("gto", "show", f"{NAME}#{stage}", "--version", cwd=repo).stdout.strip()


def tuneledger_holder(repo, stage: str) -> str | None:
    rows = json.loads(run("tuneledger", "show", "--json", cwd=repo).stdout)
    return next((r["version"] for r in rows if stage in r["stages"]), None)


def test_gto_check_ref_and_dvc_artifacts_agree_with_the_registry(registry_copy, tmp_path):
    assert tuneledger_holder(registry_copy, "prod") == gto_holder(registry_copy, "prod") == "v1.0.0"
    run("tuneledger", "rollback", "--stage", "prod", "--to", "v1.1.0", cwd=registry_copy)
    assert tuneledger_holder(registry_copy, "prod") == gto_holder(registry_copy, "prod") == "v1.1.0"
    gto_versions = json.loads(run("gto", "show", NAME, "--json", cwd=registry_copy).stdout)
    assert {v["version"] for v in gto_versions} == {"v1.0.0", "v1.1.0"}  # gto lists one artifact's versions
    newest = run("git", "tag", "--sort=-creatordate", cwd=registry_copy).stdout.split()[0]
    checked = run("gto", "check-ref", newest, "--json", cwd=registry_copy).stdout
    assert "assignment" in checked and "v1.1.0" in checked and "prod" in checked
    run("dvc", "artifacts", "get", ".", NAME, "--stage", "prod", "-o", tmp_path / "got", cwd=registry_copy)
    committed = run("git", "show", f"{NAME}@v1.1.0:models/export.manifest.json", cwd=registry_copy).stdout
    assert read_json(tmp_path / "got/metadata.json")["content_id"] == json.loads(committed)["content_id"]


def test_a_long_history_reads_in_one_pass_and_stays_gto_compatible(project_copy):
    holders = write_history(project_copy, versions=150, stage_tags=300)
    rows = json.loads(run("tuneledger", "show", "--json", cwd=project_copy).stdout)
    assert len(rows) == 150
    assert {s: r["version"] for r in rows for s in r["stages"]} == holders
    events = json.loads(run("tuneledger", "history", "--json", cwd=project_copy).stdout)
    assert len(events) == 450 and events[0]["tag"] == f"{NAME}#prod#300"
    table = run("tuneledger", "history", cwd=project_copy).stdout
    assert f"{NAME}#prod#300" not in table and "400 older events not shown" in " ".join(table.split())
    assert table.count("│ promote") == 50
    assert run("tuneledger", "history", "--limit", "0", cwd=project_copy).stdout.count("│ promote") == 300
    assert gto_holder(project_copy, "prod") == holders["prod"]
    rolled = run("tuneledger", "rollback", "--stage", "prod", cwd=project_copy).stdout
    previous = next(e["from"] for e in events if e["tag"] == f"{NAME}#prod#300")
    assert f"→ {previous}" in rolled
    assert tuneledger_holder(project_copy, "prod") == gto_holder(project_copy, "prod") == previous
    newest = json.loads(run("tuneledger", "history", "--json", cwd=project_copy).stdout)[0]
    assert newest["tag"] == f"{NAME}#prod#301" and newest["event"] == "rollback"


def tag_times(repo, pattern: str) -> list[int]:
    out = run("git", "for-each-ref", "--format=%(creatordate:unix)", f"refs/tags/{pattern}", cwd=repo)
    return [int(line) for line in out.stdout.split()]


def test_stage_moves_in_quick_succession_never_share_a_second(tmp_path, monkeypatch):
    """gto and DVC order stage tags by their one-second tag time; git's coarse clock lags Python's,
    so a tag made just as the second turns must still get the later second."""
    monkeypatch.chdir(tmp_path)
    run("git", "init", "-q", cwd=tmp_path)
    for version in ("v1.0.0", "v1.1.0"):
        run("git", "commit", "-q", "--allow-empty", "-m", version, cwd=tmp_path)
        head = run("git", "rev-parse", "HEAD", cwd=tmp_path).stdout.strip()
        tags.register(NAME, head, version, "patch", "register")
    for version in ("v1.0.0", "v1.1.0") * 3:
        tags.assign(NAME, version, "prod", "move")
    times = tag_times(tmp_path, f"{NAME}#prod#*")
    assert len(set(times)) == len(times) == 6
    assert run("gto", "show", f"{NAME}#prod", "--version", cwd=tmp_path).stdout.strip() == "v1.1.0"


def test_a_tag_from_a_clock_ahead_is_followed_without_waiting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("git", "init", "-q", cwd=tmp_path)
    run("git", "commit", "-q", "--allow-empty", "-m", "v1.0.0", cwd=tmp_path)
    ahead = int(time.time()) + 3600
    registered_ahead = {"GIT_COMMITTER_DATE": f"@{ahead}"}
    run("git", "tag", "-a", f"{NAME}@v1.0.0", "-m", "registered", cwd=tmp_path, env=registered_ahead)
    started = time.monotonic()
    tags.assign(NAME, "v1.0.0", "prod", "move")
    assert time.monotonic() - started < 5
    assert tag_times(tmp_path, f"{NAME}#prod#*") == [ahead + 1]
