"""The model zoo: rung specs (torch-free), tower builders and checkpoint interop.

``scaling.models.registry`` and ``scaling.costs`` import without torch; the builders live in
``scaling.models.build`` and load torch, timm and open_clip when first used.
"""

from scaling.models.registry import (
    LADDER_ORDER,
    RungSpec,
    TextSpec,
    TowerSpec,
    UnknownRungError,
    apply_overrides,
    get_rung,
    list_rungs,
)

__all__ = [
    "LADDER_ORDER",
    "RungSpec",
    "TextSpec",
    "TowerSpec",
    "UnknownRungError",
    "apply_overrides",
    "build_clip",
    "build_mim",
    "get_rung",
    "list_rungs",
]


def __getattr__(name: str):
    # keep `import scaling.models` torch-free; the builders load torch on first use
    if name in ("build_clip", "build_mim"):
        from scaling.models import build

        return getattr(build, name)
    raise AttributeError(f"module 'scaling.models' has no attribute '{name}'")
