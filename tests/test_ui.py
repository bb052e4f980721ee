"""The registry page (`tuneledger ui`) in a real browser: what it shows agrees with gto and with the
CLI, and it moves a stage only through the API, with the key, past the gate.

One headless Chromium for the session. The read-only tests share one copy of the registry and one
page; the action tests share another copy, whose page has a key. Screenshots go to pytest's
temporary directory; with TUNELEDGER_SCREENSHOTS=1 the two the README shows are written to
docs/images/ as well (a test run does not otherwise change tracked files).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from browser import chromium, page_server, screenshot, wait_for
from conftest import PROJECT, copy_repo, run, set_params
from tuneledger.core.s3local import free_port
from tuneledger.serve import log, log_reports
from tuneledger.ui.pages import card_html

NAME = "lora-adapter"
KEY = "ui-test-key-0123456789abcdef"  # at least 16 characters, as for `serve`
README_IMAGES = PROJECT / "docs" / "images"


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def gto_stages(repo) -> dict[str, str]:
    """Stage → version, as `gto show` reads the tags (stages no version holds left out)."""
    stages = json.loads(run("gto", "show", "--json", cwd=repo).stdout)[NAME]["stage"]
    return {stage: version for stage, version in stages.items() if version}


def tags(repo) -> set[str]:
    return set(run("git", "tag", cwd=repo).stdout.split())


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every page test."""
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where screenshots go; the README's two also into docs/images/ when asked."""
    folder = tmp_path_factory.mktemp("screenshots")

    def save(driver, name: str, for_readme: bool = False):
        path = screenshot(driver, folder / name)
        if for_readme and os.environ.get("TUNELEDGER_SCREENSHOTS") == "1":
            shutil.copy(path, README_IMAGES / name)
        return path

    return save


@pytest.fixture(scope="module")
def readonly(registry, tmp_path_factory):
    """The registry's copy the read-only tests share, and its page (no key: read-only)."""
    repo = copy_repo(registry[0], tmp_path_factory.mktemp("ui") / "repo")
    db = repo / ".tuneledger" / "ui-test.sqlite"  # a serving log of its own, written by test_serving
    with page_server(repo, "--db", str(db)) as page:
        yield repo, page.url, db


@pytest.fixture(scope="module")
def with_key(registry, tmp_path_factory):
    """Another copy whose page has a key. The gate there refuses any drift, so v1.1.0 (rank 4, against
    v1.0.0's rank 8 in prod) is refused whatever the machine trained."""
    repo = copy_repo(registry[0], tmp_path_factory.mktemp("ui-actions") / "repo")
    set_params(repo, **{"registry.max_norm_drift": 1e-6})
    with page_server(repo, api_key=KEY) as page:
        yield repo, page.url


def test_the_versions_table_shows_the_stages_gto_shows(browser, readonly, shots):
    repo, url, _ = readonly
    browser.get(url)
    rows = css(browser, "#versions-table tbody tr[data-version]")
    shown = {row.get_attribute("data-version"): {p.text for p in css(row, "td.stages .pill")} for row in rows}
    expected = {version: set() for version in shown}
    for stage, version in gto_stages(repo).items():
        expected[version].add(stage)
    assert shown == expected
    assert set(shown) == {"v1.0.0", "v1.1.0"}
    # Offline: everything the page loaded came from the page itself.
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(url + "/") for name in loaded), loaded
    shots(browser, "ui-versions.png", for_readme=True)


def test_a_version_page_draws_every_point_of_its_dvclive_series(browser, readonly, shots):
    repo, url, _ = readonly
    browser.get(f"{url}/versions/v1.1.0")
    commit = run("git", "rev-list", "-n1", f"{NAME}@v1.1.0", cwd=repo).stdout.strip()
    for series, stage in (("train loss", "train"), ("eval loss", "eval")):
        tsv = run("git", "show", f"{commit}:results/train/plots/metrics/{stage}/loss.tsv", cwd=repo).stdout
        points = wait_for(browser, lambda d, s=series: css(d, f'#curves g[data-series="{s}"] circle.point'))
        assert len(points) == len(tsv.strip().splitlines()) - 1  # the header line is no point
    # The package below is read from the local DVC cache and verified against its manifest.
    package = wait_for(browser, lambda d: css(d, '[data-fragment][data-loaded="ok"]'), what="package")[0]
    assert "verified" in package.find_element("css selector", "h2").text
    assert package.find_element("css selector", ".model-card h1").text.startswith("LoRA adapter for")
    shots(browser, "ui-version.png")


def test_a_comparison_shows_the_metric_differences_tuneledger_diff_computes(browser, readonly, shots):
    repo, url, _ = readonly
    a, b = f"{NAME}@v1.0.0", f"{NAME}@v1.1.0"
    diff = json.loads(run("tuneledger", "diff", a, b, "--json", cwd=repo).stdout)
    browser.get(f"{url}/compare")  # by default: prod (v1.0.0 after the rollback) against the newest other
    rows = wait_for(browser, lambda d: css(d, "#metric-differences tr[data-key]"), what="the diff")
    assert [s.get_attribute("value") for s in css(browser, "form select")] == ["v1.0.0", "v1.1.0"]
    shown = {row.get_attribute("data-key"): row for row in rows}
    numeric = [k for k in diff["keys"] if k.startswith("metrics.") and isinstance(diff["a"][k], float)]
    assert numeric and set(shown) == set(numeric)
    for key in numeric:
        delta = diff["b"][key] - diff["a"][key]
        assert float(shown[key].get_attribute("data-delta")) == pytest.approx(delta, rel=1e-12, abs=1e-15)
        assert shown[key].find_elements("css selector", "td")[3].text in (f"{delta:+.4g}", "±0")
    rank = css(browser, '#adapter tr[data-key="adapter.rank_from_weights"] td')
    assert [cell.text for cell in rank[1:]] == [str(diff["a"]["adapter.rank_from_weights"]), "4"]
    shots(browser, "ui-compare.png", for_readme=True)


def test_history_filters_the_audit_trail_by_stage(browser, readonly):
    repo, url, _ = readonly
    every = json.loads(run("tuneledger", "history", "--json", cwd=repo).stdout)
    browser.get(f"{url}/history?stage=prod")
    rows = css(browser, "#history tbody tr[data-event]")
    prod = [e for e in every if e["stage"] == "prod"]
    assert [(r.get_attribute("data-event"), r.get_attribute("data-version")) for r in rows] == [
        (e["event"], e["version"]) for e in prod
    ]
    assert "wrong answers" in rows[0].text  # the rollback's reason


def _log_serving(db) -> None:
    """A serving log with ten minutes of a canary split and of a shadow, written by the writer's code."""
    connection, start = log.connect(db), time.time() - 600
    batch = []
    for second in range(0, 600, 5):
        arm = "canary" if second % 20 == 0 else "stable"
        status = 500 if second % 100 == 0 else 200
        request = {
            "time": start + second,
            "arm": arm,
            "status": status,
            "version": "v1.1.0",
            "latency_ms": 10.0,
        }
        batch.append(("requests", request))
        pair = {"time": start + second, "exact_agreement": second % 15 != 0, "token_agreement": 0.9}
        batch.append(("shadow_pairs", {**pair, "shadow_version": "v1.1.0", "prod_version": "v1.0.0"}))
    log.write_batch(connection, batch)
    connection.close()


def test_serving_charts_the_reports_over_time(browser, readonly):
    _, url, db = readonly
    _log_serving(db)
    series = log_reports.serving_series(db)
    shadow, canary = log_reports.shadow_report(db), log_reports.canary_report(db)
    assert sum(b["pairs"] for b in series["shadow"]) == shadow["pairs"] == 120
    for arm, figures in canary["arms"].items():
        assert sum(b["requests"] for b in series["canary"] if b["arm"] == arm) == figures["requests"]
    browser.get(f"{url}/serving")
    exact = wait_for(browser, lambda d: css(d, '#shadow-agreement g[data-series="exact"] circle.point'))
    assert len(exact) == len(series["shadow"])
    assert len(css(browser, "#canary-requests g.series")) == 2


def test_a_model_card_is_shown_as_text_never_as_markup():
    header, body = card_html(
        "---\nbase_model: x\n---\n# Card <script>alert(1)</script>\n[a](javascript:alert(1))\n"
    )
    assert header == "base_model: x"
    assert "<script>" not in body and "&lt;script&gt;" in body and 'href="javascript' not in body


def test_a_read_only_page_shows_no_action_and_refuses_one(browser, readonly):
    _, url, _ = readonly
    browser.get(f"{url}/versions/v1.1.0")
    assert not css(browser, "form[data-action]")
    status = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('/actions/promote', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({version: 'v1.1.0', stage: 'prod'})}).then(r => done(r.status));"
    )
    assert status == 403


def _promote(browser, url, key: str, stage: str, force: bool = False, reason: str = ""):
    """Fill in and send the page's promote form for v1.1.0; the result element once it has one."""
    from selenium.webdriver.support.ui import Select

    browser.get(f"{url}/versions/v1.1.0")
    field = css(browser, "#api-key")[0]
    field.clear()  # the tab remembers the key typed last
    field.send_keys(key)
    form = css(browser, 'form[data-action="promote"]')[0]
    Select(form.find_element("name", "stage")).select_by_visible_text(stage)
    if force:
        form.find_element("name", "force").click()
    form.find_element("name", "reason").send_keys(reason)
    form.find_element("css selector", "button[type=submit]").click()
    return wait_for(browser, lambda d: css(d, ".result.done, .result.refused"), timeout=120, what="promote")[
        0
    ]


def test_a_promote_without_the_key_is_refused_and_moves_nothing(browser, with_key):
    repo, url = with_key
    before, stages = tags(repo), gto_stages(repo)
    result = _promote(browser, url, key="", stage="prod")
    assert "missing or wrong API key" in result.text
    result = _promote(browser, url, key="not-" + KEY, stage="prod")
    assert "missing or wrong API key" in result.text
    assert tags(repo) == before and gto_stages(repo) == stages


def test_with_the_key_the_gate_decides_and_forcing_needs_a_reason(browser, with_key, shots):
    repo, url = with_key
    before = tags(repo)
    refused = _promote(browser, url, key=KEY, stage="prod")
    failed = {r.get_attribute("data-check") for r in css(refused, "tr[data-check]") if "FAIL" in r.text}
    assert "gate refused v1.1.0 for prod" in refused.text and failed == {"drift"}
    shots(browser, "ui-gate-refused.png")
    unexplained = _promote(browser, url, key=KEY, stage="prod", force=True)
    assert "--force needs --reason" in unexplained.text
    assert tags(repo) == before and gto_stages(repo)["prod"] == "v1.0.0"

    forced = _promote(browser, url, key=KEY, stage="prod", force=True, reason="drift expected: rank 4")
    assert "prod: v1.0.0 → v1.1.0 (forced)" in forced.text
    assert gto_stages(repo)["prod"] == "v1.1.0"
    latest = json.loads(run("tuneledger", "history", "--json", cwd=repo).stdout)[0]
    assert latest["forced"] and latest["reason"] == "drift expected: rank 4"


def test_a_page_for_other_machines_needs_a_key_or_insecure(registry):
    port = str(free_port())  # refused before it binds; were it not, on a port no one else uses
    command = ("tuneledger", "ui", "--host", "0.0.0.0", "--port", port)
    done = run(*command, cwd=registry[0], check=False, env={"TUNELEDGER_API_KEY": ""}, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "ui: --host 0.0.0.0 is reachable from other machines and no API key is set" in done.stderr
