"""Debian's ``chromium``, headless, on a fresh profile: what a new user's browser shows at an address.

``find_chromium()`` installs the package with ``apt-get`` when it is missing and the tests run as
root; otherwise it returns ``None`` with the reason, so a test can skip saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser")


def find_chromium() -> tuple[str | None, str]:
    """(path to chromium, "") or (None, why it cannot be had)."""
    found = next(filter(None, map(shutil.which, NAMES)), None)
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "chromium is not installed and cannot be (needs root and apt-get: apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True, env=env,
                          timeout=900)
    found = next(filter(None, map(shutil.which, NAMES)), None)
    if done.returncode or not found:
        return None, f"apt-get install chromium failed ({done.returncode}): {(done.stdout + done.stderr)[-300:]}"
    return found, ""


def _run(chromium: str, url: str, what: list[str], size: tuple[int, int],
         budget_ms: int) -> subprocess.CompletedProcess:
    # A new profile folder per call: no local storage, cookies or cache from an earlier visit.
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}", *what, url],
            capture_output=True, text=True, timeout=300, check=True)


def dump_dom(chromium: str, url: str, size: tuple[int, int] = (1600, 1000), budget_ms: int = 20_000) -> str:
    """The page's DOM once its scripts ran for ``budget_ms`` of virtual time (a fresh profile)."""
    return _run(chromium, url, ["--dump-dom"], size, budget_ms).stdout


def screenshot(chromium: str, url: str, path: Path, size: tuple[int, int] = (1600, 1000),
               budget_ms: int = 20_000) -> Path:
    """A PNG of the page as a fresh profile sees it."""
    _run(chromium, url, [f"--screenshot={Path(path).resolve()}"], size, budget_ms)
    return Path(path)
