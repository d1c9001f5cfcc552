"""The rungs of the EVA ladder, read from ``experiments/models/*.yaml`` (no torch import).

Each YAML file describes one model: its vision tower, text tower (or ``null`` for a
MIM-only tower), the MIM form of the vision tower (overrides on top of ``vision``), the
published parameter counts, and a ``proxy`` section (overrides that shrink it for CPU).
A file may ``extends: other.yaml`` and override only what differs. Files load as a typed
config (``RungFile``, OmegaConf structured) with the stage configs' errors: file and key
named, close matches suggested.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from scaling import costs, paths
from scaling.config_dialect import ConfigError, load_structured, load_yaml
from scaling.models.specs import (
    RungSpec,
    SpecError,
    TextSpec,
    TowerSpec,
    apply_overrides,
    make,
)

__all__ = ["LADDER_ORDER", "RungSpec", "SpecError", "TextSpec", "TowerSpec", "UnknownRungError", "apply_overrides",
           "configured_rung", "configured_rung_of", "get_rung", "ladder_order", "ladder_rungs", "list_rungs",
           "models_dir", "reload", "rung_names"]



def ladder_order(path: str | Path = paths.DEFAULT_LADDER) -> list[str]:
    """The rungs a ladder file trains from a teacher, in the file's (weak-to-strong) order; a rung
    without a teacher (the external g14) only teaches. No such file: none (the ladder's commands
    say which file is missing when they need it)."""
    if not Path(path).is_file():
        return []
    rungs = load_yaml(path).get("rungs") or {}
    return [str(key) for key, entry in rungs.items() if (entry or {}).get("teacher")]


LADDER_ORDER: list[str] = ladder_order()

@dataclass
class ProxyFields:
    """A rung file's ``proxy:``: overrides that shrink the rung for CPU (same switches, smaller sizes)."""

    embed_dim: Optional[int] = None
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    mim: dict[str, Any] = field(default_factory=dict)


@dataclass
class RungFile:
    """Schema of a rung file. Tower sections are open mappings: ``specs.make`` checks their fields."""

    name: Optional[str] = None  # default: the file's stem
    aliases: list[str] = field(default_factory=list)
    extends: Optional[str] = None  # a rung file beside this one; this file overrides what differs
    source: str = ""
    published: dict[str, Any] = field(default_factory=dict)  # parameter counts as the papers give them
    embed_dim: Optional[int] = None
    vision: Optional[dict[str, Any]] = None
    text: Optional[dict[str, Any]] = None  # None: a MIM-only tower
    mim: dict[str, Any] = field(default_factory=dict)  # the MIM form: overrides on top of vision
    proxy: Optional[ProxyFields] = None


# Replaced (not merged) when a file extends another.
_REPLACED = {"published", "aliases", "name", "source"}


class UnknownRungError(ValueError):
    """A rung name that is neither a full model name nor an alias."""


def models_dir() -> Path:
    """Folder of the rung YAML files (``$SCALING_EXPERIMENTS/models``)."""
    return Path(paths.EXPERIMENTS_DIR) / "models"


def _load(path: Path, seen: tuple[Path, ...] = (), cache: dict[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One rung file as written (a mapping), or a ``SpecError`` naming it (``cache``: files read)."""
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise SpecError(f"{path}: 'extends' loops ({chain})")
    if cache is not None and path in cache:
        return cache[path]
    if not path.is_file():
        where = f"{seen[-1]}: 'extends'" if seen else "rung file"
        raise SpecError(f"{where}: {path} does not exist")
    try:
        layer: dict[str, Any] = OmegaConf.to_container(load_yaml(path))  # type: ignore[assignment]
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    if cache is not None:
        cache[path] = layer
    return layer


def _inherited(path: Path, key: str, cache: dict[Path, dict[str, Any]], seen: tuple[Path, ...] = ()) -> Any:
    """``key`` of a rung file, or of the file it extends when it does not set it."""
    layer = _load(path, seen, cache)
    if key in layer or not layer.get("extends"):
        return layer.get(key)
    return _inherited(path.parent / str(layer["extends"]), key, cache, (*seen, path))


def _read(path: Path, seen: tuple[Path, ...] = (), memo: dict[Path, dict[str, Any]] | None = None,
          cache: dict[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A rung file as a ``RungFile`` container, with what it ``extends`` merged underneath
    (``memo``: files already merged, so a parent extended by several files is merged once)."""
    memo = {} if memo is None else memo
    if path in memo:
        return copy.deepcopy(memo[path])
    layer = copy.deepcopy(_load(path, seen, cache))
    layers = [(layer, str(path))]
    if layer.get("extends"):
        base = _read(path.parent / str(layer["extends"]), (*seen, path), memo, cache)
        for key in _REPLACED & set(layer):
            base.pop(key)
        layers.insert(0, ({**base, "extends": None}, str(path.parent / str(layer["extends"]))))
    memo[path] = OmegaConf.to_container(load_structured(RungFile, layers, error=SpecError), resolve=True)
    return copy.deepcopy(memo[path])


def _build(data: Mapping[str, Any], path: Path, proxy: bool) -> RungSpec:
    if data.get("name") is None or data.get("vision") is None:
        raise SpecError(f"{path}: a rung needs at least 'name' and 'vision'")
    if proxy:
        shrink = {k: v for k, v in (data.get("proxy") or {}).items() if v not in (None, {})}
        if not shrink:
            raise SpecError(f"{path}: no 'proxy' section; every rung needs a CPU proxy")
        data = OmegaConf.to_container(OmegaConf.merge(data, shrink))
    embed = data.get("embed_dim")
    vision_values = dict(data.get("vision") or {})
    vision = make(TowerSpec, {**vision_values, "embed_dim": embed}, f"{path}: vision")
    mim_values = {**vision_values, **dict(data.get("mim") or {}), "embed_dim": None}
    mim = make(TowerSpec, mim_values, f"{path}: mim")
    text = None
    if data.get("text") is not None:
        text = make(TextSpec, {**dict(data.get("text") or {}), "embed_dim": embed}, f"{path}: text")
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
        # Names and aliases come from the files as written (following 'extends'); a file is
        # validated and merged (``_read``: OmegaConf, ~15 ms a file) only when its rung is used.
        self.files: dict[str, Path] = {}
        self.aliases: dict[str, list[str]] = {}
        self.layers: dict[Path, dict[str, Any]] = {}  # files as written
        for path in files:
            name = str(_inherited(path, "name", self.layers) or path.stem)
            self.files[name] = path
            aliases = _inherited(path, "aliases", self.layers) or []
            if not isinstance(aliases, list):
                _read(path)  # raises, naming the file and the key
            self.aliases[name] = [str(a) for a in aliases]
        self.memo: dict[Path, dict[str, Any]] = {}
        self.lookup: dict[str, str] = {}
        for name, aliases in self.aliases.items():
            for key in (name, *aliases):
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
            path = self.files[canonical]
            self.cache[key] = _build(_read(path, memo=self.memo, cache=self.layers), path, proxy)
        return self.cache[key]

    def valid_names(self) -> list[str]:
        out = []
        for name in self.ordered():
            aliases = self.aliases[name]
            out.append(f"{name} ({', '.join(map(str, aliases))})" if aliases else name)
        return out

    def ordered(self) -> list[str]:
        """Ladder rungs first (in ladder order), then the others from small to large."""
        ladder = [self.lookup[a.lower()] for a in LADDER_ORDER if a.lower() in self.lookup]
        others = [n for n in self.files if n not in ladder]

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


def configured_rung(name: str, proxy: bool = False, vision: Mapping[str, Any] | None = None,
                    text: Mapping[str, Any] | None = None, image_size: int | str | None = None) -> RungSpec:
    """The rung as a stage builds it: ``model.vision`` / ``model.text`` field overrides and
    ``data.image_size`` applied (vision fields change the CLIP tower and its MIM form alike, so
    MIM weights keep fitting). Values may be strings, as MLflow params hold them."""
    rung = get_rung(name, proxy)
    overrides: dict[str, Any] = dict(vision or {})
    if image_size not in (None, "", "None"):
        overrides.setdefault("image_size", int(image_size))
    if rung.text is not None and text:
        overrides["text"] = dict(text)
    return apply_overrides(rung, overrides)


def configured_rung_of(cfg: Any) -> RungSpec:
    """``configured_rung`` for a stage config: its ``stage.rung`` with its ``model.vision``,
    ``model.text`` and ``data.image_size``: the one reading the stage, the planner and the sweep
    share, so a model they build and the FLOPs they count are of the same tower."""
    return configured_rung(str(cfg.stage.rung), bool(cfg.stage.proxy),
                           OmegaConf.to_container(cfg.model.vision, resolve=True),
                           OmegaConf.to_container(cfg.model.text, resolve=True), cfg.data.image_size)


def list_rungs(proxy: bool = False) -> list[RungSpec]:
    """Every rung: the ladder's first, in ladder order, then the other models."""
    reg = _registry()
    return [reg.get(name, proxy) for name in reg.ordered()]


def ladder_rungs(proxy: bool = False) -> list[RungSpec]:
    """The rungs named in ``LADDER_ORDER``, in that order."""
    return [get_rung(alias, proxy) for alias in LADDER_ORDER]


def rung_names() -> list[str]:
    """Full names and aliases accepted by :func:`get_rung`."""
    reg = _registry()
    return [n for name in reg.ordered() for n in (name, *reg.aliases[name])]
