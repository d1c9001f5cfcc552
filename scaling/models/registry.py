"""The rungs of the EVA ladder, read from ``experiments/models/*.yaml`` (no torch import).

Each YAML file describes one model: its vision tower, text tower (or ``null`` for a
MIM-only tower), the MIM form of the vision tower (overrides on top of ``vision``), the
published parameter counts, and a ``proxy`` section (overrides that shrink it for CPU).
A file may ``extends: other.yaml`` and override only what differs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from scaling import costs, paths
from scaling.models.specs import (
    RungSpec,
    SpecError,
    TextSpec,
    TowerSpec,
    apply_overrides,
    make,
)

__all__ = [
    "LADDER_ORDER",
    "RungSpec",
    "SpecError",
    "TextSpec",
    "TowerSpec",
    "UnknownRungError",
    "apply_overrides",
    "get_rung",
    "ladder_rungs",
    "list_rungs",
    "models_dir",
    "reload",
    "rung_names",
]

LADDER_ORDER: list[str] = ["B16", "L14", "E14", "8B", "18B"]

# Top-level keys of a rung file; ``published``/``aliases`` replace (not merge) when extended.
_RUNG_KEYS = {
    "name", "aliases", "extends", "source", "published", "embed_dim",
    "vision", "text", "mim", "proxy",
}  # fmt: skip
_REPLACED = {"published", "aliases", "name", "source"}


class UnknownRungError(ValueError):
    """A rung name that is neither a full model name nor an alias."""


def models_dir() -> Path:
    """Folder of the rung YAML files (``$SCALING_EXPERIMENTS/models``)."""
    return Path(paths.EXPERIMENTS_DIR) / "models"


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], top: bool = False) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        replace = top and key in _REPLACED
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and not replace:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise SpecError(f"{path}: 'extends' loops ({chain})")
    if not path.is_file():
        where = f"{seen[-1]}: 'extends'" if seen else "rung file"
        raise SpecError(f"{where}: {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(data) - _RUNG_KEYS)
    if unknown:
        raise SpecError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_RUNG_KEYS))}"
        )
    parent = data.get("extends")
    if parent:
        base = _read(path.parent / parent, (*seen, path))
        base.pop("extends", None)
        data = _merge(base, {k: v for k, v in data.items() if k != "extends"}, top=True)
    return dict(data)


def _section(data: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: '{key}' must be a mapping")
    return dict(value)


def _build(data: Mapping[str, Any], path: Path, proxy: bool) -> RungSpec:
    if "name" not in data or "vision" not in data:
        raise SpecError(f"{path}: a rung needs at least 'name' and 'vision'")
    if proxy:
        shrink = _section(data, "proxy", path)
        if not shrink:
            raise SpecError(f"{path}: no 'proxy' section; every rung needs a CPU proxy")
        bad = sorted(set(shrink) - {"embed_dim", "vision", "text", "mim"})
        if bad:
            raise SpecError(
                f"{path}: unknown proxy key(s) {', '.join(bad)}; valid: embed_dim, vision, text, mim"
            )
        data = _merge(data, shrink)
    embed = data.get("embed_dim")
    vision_values = _section(data, "vision", path)
    vision = make(TowerSpec, {**vision_values, "embed_dim": embed}, f"{path}: vision")
    mim_values = {**vision_values, **_section(data, "mim", path), "embed_dim": None}
    mim = make(TowerSpec, mim_values, f"{path}: mim")
    text = None
    if data.get("text") is not None:
        text = make(TextSpec, {**_section(data, "text", path), "embed_dim": embed}, f"{path}: text")
    published = {str(k): str(v) for k, v in (data.get("published") or {}).items()}
    return RungSpec(
        name=str(data["name"]),
        aliases=tuple(str(a) for a in data.get("aliases") or ()),
        vision=vision,
        text=text,
        mim=mim,
        embed_dim=embed,
        source=str(data.get("source", "")),
        proxy=proxy,
        published=published,
    )


class _Registry:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        files = sorted(folder.glob("*.yaml"))
        if not files:
            raise SpecError(
                f"no rung files (*.yaml) in {folder}; set SCALING_EXPERIMENTS to the experiments folder"
            )
        self.raw = {}
        self.files = {}
        for path in files:
            data = _read(path)
            name = str(data.get("name", path.stem))
            self.raw[name] = data
            self.files[name] = path
        self.lookup: dict[str, str] = {}
        for name, data in self.raw.items():
            for key in (name, *(str(a) for a in data.get("aliases") or ())):
                other = self.lookup.get(key.lower())
                if other and other != name:
                    raise SpecError(
                        f"{self.files[name]}: name/alias '{key}' is also used by {self.files[other]}"
                    )
                self.lookup[key.lower()] = name
        self.cache: dict[tuple[str, bool], RungSpec] = {}

    def get(self, name: str, proxy: bool) -> RungSpec:
        canonical = self.lookup.get(str(name).lower())
        if canonical is None:
            raise UnknownRungError(
                f"unknown rung '{name}'; valid names: {', '.join(self.valid_names())}"
            )
        key = (canonical, proxy)
        if key not in self.cache:
            self.cache[key] = _build(self.raw[canonical], self.files[canonical], proxy)
        return self.cache[key]

    def valid_names(self) -> list[str]:
        out = []
        for name in self.ordered():
            aliases = self.raw[name].get("aliases") or []
            out.append(f"{name} ({', '.join(map(str, aliases))})" if aliases else name)
        return out

    def ordered(self) -> list[str]:
        """Ladder rungs first (in ladder order), then the others from small to large."""
        ladder = [self.lookup[a.lower()] for a in LADDER_ORDER if a.lower() in self.lookup]
        others = [n for n in self.raw if n not in ladder]

        def size(name: str) -> tuple[int, int, str]:
            rung = self.get(name, proxy=False)
            text = costs.params(rung.text) if rung.text else 0
            return costs.params(rung.mim), text, name

        return ladder + sorted(others, key=size)


_LOCK = threading.Lock()
_REGISTRIES: dict[Path, _Registry] = {}


def _registry() -> _Registry:
    folder = models_dir().resolve()
    with _LOCK:
        if folder not in _REGISTRIES:
            _REGISTRIES[folder] = _Registry(folder)
        return _REGISTRIES[folder]


def reload() -> None:
    """Forget cached rung files (after editing a YAML in the same process)."""
    with _LOCK:
        _REGISTRIES.clear()


def get_rung(name: str, proxy: bool = False) -> RungSpec:
    """The rung called ``name`` (full name or alias, case-insensitive); its CPU proxy if asked."""
    return _registry().get(name, proxy)


def list_rungs(proxy: bool = False) -> list[RungSpec]:
    """Every rung: the ladder's five first, in ladder order, then the other models."""
    reg = _registry()
    return [reg.get(name, proxy) for name in reg.ordered()]


def ladder_rungs(proxy: bool = False) -> list[RungSpec]:
    """The rungs named in ``LADDER_ORDER``, in that order."""
    return [get_rung(alias, proxy) for alias in LADDER_ORDER]


def rung_names() -> list[str]:
    """Full names and aliases accepted by :func:`get_rung`."""
    reg = _registry()
    return [
        n for name in reg.ordered() for n in (name, *map(str, reg.raw[name].get("aliases") or ()))
    ]
