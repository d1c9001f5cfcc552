"""The import rule of docs/architecture.md: packages import downwards only, no module cycles, and
the planning layer (what a dry run loads) imports no torch, training or data pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "deepspeed", "open_clip", "timm", "scaling.train", "scaling.data")


def _env() -> dict[str, str]:
    # the subprocess imports this checkout's package, wherever pytest was started
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_import_contracts_in_pyproject_hold() -> None:
    pytest.importorskip("importlinter", reason="import-linter is a dev extra: pip install -e '.[dev]'")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    out = subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout, out.stdout[-2000:]


def test_the_ladder_dry_run_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['scaling.ladder', '--from', 'E14', '--to', '18B', '--dry-run']\n"
        "try:\n"
        "    runpy.run_module('scaling.ladder', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, f'dry run exited {exc.code}'\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({HEAVY!r}))\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stdout[-2000:]
