"""``python -m scaling``: lists its commands; an unknown one exits 2 with the list."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True, timeout=60)


def test_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for name in ("ladder", "sweep", "train", "analysis", "models"):
        assert name in out.stdout


def test_unknown_command_exits_2_with_list():
    out = run("frobnicate")
    assert out.returncode == 2
    assert "unknown command 'frobnicate'" in out.stderr and "ladder" in out.stderr
