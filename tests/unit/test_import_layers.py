"""The import rule of docs/architecture.md: packages import downwards only, no module cycles, no
two modules (or a package and its module) importing each other, and the planning layer (what a
dry run loads) imports no torch, training or data pipeline."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "deepspeed", "open_clip", "timm", "scaling.train", "scaling.data")


def _module_names(root: Path = REPO) -> dict[str, Path]:
    """Every module and package of ``root/scaling`` by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in (root / "scaling").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports anywhere in its file, inside functions and ``TYPE_CHECKING``
    blocks too: ``from P import m`` imports the package ``P`` (and ``P.m`` when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in out if m in known and m != name}


def two_way_imports(known: dict[str, Path]) -> list[tuple[str, str]]:
    edges = {name: _imports(name, path, known) for name, path in known.items()}
    return sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if a in edges[b]})


def test_no_two_modules_import_each_other() -> None:
    """A module that imports one importing it back (or a package's ``__init__`` importing its
    module that imports the package) works only in some import orders; share the types below."""
    pairs = two_way_imports(_module_names())
    assert not pairs, "two-way imports (move what both need into a module below them): " + ", ".join(
        f"{a} <-> {b}" for a, b in pairs)


def test_the_two_way_check_sees_type_checking_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "scaling" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from scaling.pkg.mod import f\n")
    (pkg / "mod.py").write_text("from scaling.pkg import helper\n\ndef f():\n    pass\n")
    (pkg / "helper.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from .other import Thing\n")
    (pkg / "other.py").write_text("from scaling.pkg.helper import x\n")
    assert two_way_imports(_module_names(tmp_path)) == [("scaling.pkg", "scaling.pkg.mod"),
                                      ("scaling.pkg.helper", "scaling.pkg.other")]


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
