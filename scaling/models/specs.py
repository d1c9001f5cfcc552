"""Architecture specs of towers and rungs: plain dataclasses, no torch.

A ``TowerSpec`` says everything needed to build an EVA vision tower (and to count its
parameters and FLOPs without building it); a ``TextSpec`` does the same for an open_clip
text transformer; a ``RungSpec`` ties a CLIP's towers and the MIM form of its vision tower.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

CHOICES: dict[str, tuple[str, ...]] = {
    "mlp": ("swiglu", "gelu"),
    "norm": ("layernorm", "rmsnorm"),
    "ln_mode": ("pre", "sub", "post"),
    "pos": ("rope", "abs"),
    "init": ("beit", "xavier"),
}


class SpecError(ValueError):
    """A tower or rung spec has a bad or unknown field."""


@dataclass(frozen=True)
class TowerSpec:
    """An EVA vision tower (timm ``Eva``).

    ``ln_mode``: ``pre`` = pre-LN blocks; ``sub`` = pre-LN plus sub-LN (a norm inside the
    MLP before its output projection, and with ``sub_ln_attn`` one before the attention's
    output projection, as EVA-02); ``post`` = residual post-norm blocks (EVA-02-CLIP-E,
    EVA-CLIP-18B). ``pos``: ``rope`` = 2D RoPE in every block (plus the learned absolute
    embedding when ``abs_pos_embed``), ``abs`` = learned absolute embedding only.
    ``embed_dim`` is the CLIP projection width; ``None`` means no projection (MIM form).
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    mlp: str = "swiglu"
    norm: str = "layernorm"
    ln_mode: str = "pre"
    sub_ln_attn: bool = True
    pos: str = "abs"
    abs_pos_embed: bool = True
    rope_ref_grid: int | None = None
    qkv_bias: bool = True
    qkv_fused: bool = True
    class_token: bool = True
    init: str = "beit"
    embed_dim: int | None = None
    in_chans: int = 3

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, ("image_size", "patch_size", "width", "depth", "heads", "mlp_hidden"))
        if self.image_size % self.patch_size:
            raise SpecError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.width % self.heads:
            raise SpecError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.pos == "rope" and (self.width // self.heads) % 4:
            raise SpecError(
                f"2D RoPE needs a head width divisible by 4; width/heads = {self.width // self.heads}"
            )
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise SpecError(f"embed_dim must be > 0 or null; got {self.embed_dim}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + int(self.class_token)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class TextSpec:
    """An open_clip ``TextTransformer`` (causal, argmax pooling, no projection bias)."""

    context_length: int
    vocab_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    embed_dim: int | None = None

    def __post_init__(self) -> None:
        _check_positive(self, ("context_length", "vocab_size", "width", "depth", "heads"))
        if self.width % self.heads:
            raise SpecError(f"text width ({self.width}) must be divisible by heads ({self.heads})")

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)  # as open_clip computes it


@dataclass(frozen=True)
class RungSpec:
    """One model of the ladder: CLIP towers plus the MIM form of its vision tower."""

    name: str
    aliases: tuple[str, ...]
    vision: TowerSpec
    text: TextSpec | None
    mim: TowerSpec
    embed_dim: int | None
    source: str
    proxy: bool = False
    published: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def alias(self) -> str:
        """The short name (first alias) or the full name when there is none."""
        return self.aliases[0] if self.aliases else self.name

    @property
    def is_clip(self) -> bool:
        return self.text is not None


Spec = TypeVar("Spec", TowerSpec, TextSpec, RungSpec)


def _check_choices(spec: Any) -> None:
    for name, allowed in CHOICES.items():
        value = getattr(spec, name, None)
        if value is not None and value not in allowed:
            raise SpecError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _check_positive(spec: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise SpecError(f"{name} must be a positive integer; got {value!r}")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Turn command-line strings into the field's type (``'true'`` -> True, ``'64'`` -> 64)."""
    if not isinstance(value, str):
        return value
    annotation = str(next(f.type for f in dataclasses.fields(cls) if f.name == name))
    low = value.strip().lower()
    if low in ("none", "null") and "None" in annotation:
        return None
    if annotation.startswith("bool"):
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise SpecError(f"{name} must be true or false; got {value!r}")
    if annotation.startswith("int"):
        try:
            return int(value)
        except ValueError:
            raise SpecError(f"{name} must be an integer; got {value!r}") from None
    if annotation.startswith("float"):
        try:
            return float(value)
        except ValueError:
            raise SpecError(f"{name} must be a number; got {value!r}") from None
    return value


def make(cls: type[Spec], values: Mapping[str, Any], where: str = "") -> Spec:
    """Build ``cls`` from a mapping, naming unknown or missing fields clearly."""
    valid = field_names(cls)
    unknown = sorted(set(values) - set(valid))
    prefix = f"{where}: " if where else ""
    if unknown:
        raise SpecError(
            f"{prefix}unknown {cls.__name__} field(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    try:
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
    except TypeError as exc:  # missing required fields
        raise SpecError(f"{prefix}{cls.__name__}: {exc}") from None
    except SpecError as exc:
        raise SpecError(f"{prefix}{exc}") from None


def _replace(spec: Any, overrides: Mapping[str, Any]) -> Any:
    cls = type(spec)
    valid = field_names(cls)
    for key in overrides:
        if key not in valid:
            raise SpecError(f"unknown {cls.__name__} field '{key}'; valid: {', '.join(valid)}")
    values = {k: _coerce(cls, k, v) for k, v in overrides.items()}
    return dataclasses.replace(spec, **values)


def apply_overrides(spec: Spec, overrides: Mapping[str, Any]) -> Spec:
    """Return ``spec`` with fields replaced; unknown fields raise naming the valid ones.

    On a ``RungSpec``: ``vision.x`` / ``text.x`` / ``mim.x`` (or nested dicts) change one
    tower; a bare vision-tower field (``mlp``, ``norm``, ``ln_mode``, ``pos``, ``qkv_bias``,
    ``init``, ...) changes both the CLIP vision tower and its MIM form, so that MIM weights
    keep fitting the CLIP; other bare keys are rung fields (``embed_dim``).
    """
    if not overrides:
        return spec
    if not isinstance(spec, RungSpec):
        return _replace(spec, overrides)
    per_part: dict[str, dict[str, Any]] = {"vision": {}, "text": {}, "mim": {}, "rung": {}}
    tower_fields = set(field_names(TowerSpec))
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head in ("vision", "text", "mim") and rest:
            per_part[head][rest] = value
        elif head in ("vision", "text", "mim") and isinstance(value, Mapping):
            per_part[head].update(value)
        elif key in tower_fields and key != "embed_dim":
            per_part["vision"][key] = value
            per_part["mim"][key] = value
        else:
            per_part["rung"][key] = value
    rung_fields = {"embed_dim"}
    bad = sorted(set(per_part["rung"]) - rung_fields)
    if bad:
        valid = sorted(
            rung_fields | tower_fields | {"vision.<field>", "text.<field>", "mim.<field>"}
        )
        raise SpecError(f"unknown rung override '{bad[0]}'; valid: {', '.join(valid)}")
    vision = _replace(spec.vision, per_part["vision"])
    mim = _replace(spec.mim, per_part["mim"])
    text = spec.text
    if per_part["text"]:
        if text is None:
            raise SpecError(f"{spec.name} has no text tower to override")
        text = _replace(text, per_part["text"])
    embed = spec.embed_dim
    if "embed_dim" in per_part["rung"]:
        embed = _coerce(TowerSpec, "embed_dim", per_part["rung"]["embed_dim"])
        vision = dataclasses.replace(vision, embed_dim=embed)
        if text is not None:
            text = dataclasses.replace(text, embed_dim=embed)
    return dataclasses.replace(spec, vision=vision, text=text, mim=mim, embed_dim=embed)
