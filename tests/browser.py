"""The registry page in a real browser: `tuneledger ui` on a free loopback port, and Debian's
Chromium, headless, driven by Selenium (installed test-only by `make test-setup`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless as root with no GPU, at one window size so screenshots compare (STACK.md).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900")
KEY_VARIABLE = "TUNELEDGER_API_KEY"


@dataclass(frozen=True)
class Page:
    """A running `tuneledger ui`: where it answers, and its process."""

    url: str
    proc: subprocess.Popen
    stderr: Path


@contextlib.contextmanager
def page_server(repo: Path, *args: str, api_key: str | None = None, timeout: float = 60) -> Iterator[Page]:
    """`tuneledger ui` from `repo` (with `api_key`, or read-only), once it answers; stopped after."""
    import httpx

    from tuneledger.core.s3local import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != KEY_VARIABLE}  # read-only unless given a key
    env.update({KEY_VARIABLE: api_key} if api_key else {})
    errors = repo / ".tuneledger" / f"ui-{port}.err"  # beside the serving log, which git ignores
    errors.parent.mkdir(exist_ok=True)
    with errors.open("w") as stderr:
        command = ["tuneledger", "ui", "--port", str(port), *args]
        proc = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    try:
        while True:  # the stylesheet answers as soon as the app does, without reading the registry
            assert proc.poll() is None, errors.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/static/page.css", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"the page did not start: {errors.read_text()}"
            time.sleep(0.1)
        yield Page(url, proc, errors)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        errors.unlink(missing_ok=True)


def chromium():
    """A headless Chromium under Selenium's control (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def wait_for(driver, condition: Callable, timeout: float = 30, what: str = "the page"):
    """`condition(driver)`'s first truthy value, polled until `timeout`."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        condition, f"{what} not ready within {timeout} s"
    )


def screenshot(driver, path: Path) -> Path:
    """The whole page as a PNG: the window grows to the page's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 900), 4000))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path
