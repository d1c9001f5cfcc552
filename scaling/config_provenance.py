"""Which layer set each key of a stage config (``--show-config``): the schema default, a recipe
or ladder file (with the line), the command line, or the planner. A stage config merges up to
16 layers; while ``recording()`` is active, every ``scaling.config.merge`` notes the keys its
layer sets, and the last layer to set a key is the one shown."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from scaling.paths import REPO_ROOT

SCHEMA = "schema default (scaling/config_schema.py)"
# stage name -> key -> origin, and the stage whose config is being built
_TABLES: ContextVar[dict[str, dict[str, str]] | None] = ContextVar("provenance", default=None)
_CURRENT: ContextVar[str | None] = ContextVar("provenance_stage", default=None)


@contextlib.contextmanager
def recording() -> Iterator[dict[str, dict[str, str]]]:
    """Record, per stage built inside the block, where each key was set (stage -> key -> origin)."""
    tables: dict[str, dict[str, str]] = {}
    token, current = _TABLES.set(tables), _CURRENT.set(None)
    try:
        yield tables
    finally:
        _TABLES.reset(token)
        _CURRENT.reset(current)


def begin(stage: str) -> None:
    """A config for ``stage`` starts from the schema: what earlier builds of it recorded is void."""
    tables = _TABLES.get()
    if tables is not None:
        tables[stage] = {}
        _CURRENT.set(stage)


def record(layer: Any, source: str) -> None:
    """Note the keys ``layer`` sets as set by ``source`` (a file, ``FILE: section.target`` for a
    section of a ladder file, or a word such as ``command line``)."""
    tables, stage = _TABLES.get(), _CURRENT.get()
    if tables is None or stage is None:
        return
    if isinstance(layer, DictConfig | ListConfig):
        layer = OmegaConf.to_container(layer, resolve=False)
    file, within = _file_of(source)
    lines = _key_lines(str(file)) if file else {}
    for key in _leaf_keys(layer):
        where = f"{within}.{key}" if within else key
        tables[stage][key] = f"{_shown(file)}:{lines[where]}" if where in lines else source


def _file_of(source: str) -> tuple[Path | None, str]:
    path, _, within = source.partition(": ")
    return (Path(path), within) if path.endswith((".yaml", ".yml")) and Path(path).is_file() else (None, "")


def _shown(path: Path) -> str:
    """A file of this checkout relative to it (``experiments/recipes/clip.yaml``), others as given."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _leaf_keys(layer: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(layer, Mapping) and layer:
        for key, value in layer.items():
            yield from _leaf_keys(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1]


@functools.lru_cache(maxsize=64)
def _key_lines(path: str) -> dict[str, int]:
    """Dotted key -> the 1-based line it is written on, for every mapping key of a YAML file."""
    out: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}{key.value}"
                out[dotted] = key.start_mark.line + 1
                walk(value, dotted + ".")

    root = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")
    return out


def origin_of(key: str, origins: Mapping[str, str]) -> str:
    """Who set ``key``: its own entry, else the nearest enclosing key's (a layer that set a whole
    section or list), else the schema's default."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found:
            return found
    return SCHEMA


def format_config(flat: Mapping[str, str], origins: Mapping[str, str]) -> str:
    """``key = value  # origin`` per key, aligned (long values push their own comment only)."""
    width = min(60, max((len(f"{k} = {v}") for k, v in flat.items()), default=0))
    return "\n".join(f"{f'{k} = {v}':<{width}}  # {origin_of(k, origins)}" for k, v in flat.items())
