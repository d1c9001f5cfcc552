"""The EVA papers' published numbers, as data files next to this module.

Every row names the tables its values come from (``table``, each paper by its name: EVA-CLIP,
EVA-CLIP-18B, EVA-02) and where they were cross-checked (``source``:
BAAI's EVA GitHub READMEs). Where the EVA-CLIP-18B paper evaluates a model (its Tables 1-3: EVA
models and the peers OpenCLIP-G/14, DFN5B-CLIP-H/14 at 224 and 378 px, InternVL-C), its figures
are used, so that every model in the bubble chart is evaluated alike; other papers' or the
READMEs' different figures for the same model are named in ``note``. A value no source gives is
left empty and the ``note`` column says so; nothing here is estimated or derived. The extracted
EVA-CLIP-18B tables end every model name with "+" (a mark of the PDF, on every row): names here
drop it, except the model cards' "plus" models (EVA-01-CLIP-g/14+, EVA-02-CLIP-L/14+, E/14+).

Units: parameters in millions, samples seen in billions, batch size in thousands, accuracies in
percent, ``gflops`` as the EVA-02 paper counts them (multiply-adds).
"""

from __future__ import annotations

import math
from importlib import resources

import pandas as pd

from scaling import costs
from scaling.models.registry import get_rung

TABLES: dict[str, str] = {
    "clip_models": "CLIP models and peers: configs, IN-1K zero-shot, COCO R@5, 27-set averages "
                   "(EVA-CLIP-18B Tabs. 1-3, EVA-02 Tabs. 9-12)",
    "eva02_sizes": "EVA-02 MIM towers: shapes and parameters (EVA-02 Tab. 5)",
    "headlines": "Headline results (EVA-CLIP / EVA-CLIP-18B abstracts)",
}

# Registry names of the rung files (experiments/models/*.yaml) for the published CLIP models, used
# to compute forward FLOPs with the project's cost model (peers have none: parameter estimate).
REGISTRY_NAMES: dict[str, str] = {
    "EVA-01-CLIP-g/14": "EVA01-CLIP-g-14",
    "EVA-01-CLIP-g/14+": "EVA01-CLIP-g-14-plus",
    "EVA-02-CLIP-B/16": "EVA02-CLIP-B-16",
    "EVA-02-CLIP-L/14": "EVA02-CLIP-L-14",
    "EVA-02-CLIP-L/14+": "EVA02-CLIP-L-14-336",
    "EVA-02-CLIP-E/14": "EVA02-CLIP-E-14",
    "EVA-02-CLIP-E/14+": "EVA02-CLIP-E-14-plus",
    "EVA-CLIP-8B": "EVA-CLIP-8B",
    "EVA-CLIP-18B": "EVA-CLIP-18B",
}


class UnknownTableError(KeyError):
    """A published table name that does not exist."""


def table(name: str) -> pd.DataFrame:
    """One published table as a DataFrame (empty cells are NaN)."""
    if name not in TABLES:
        raise UnknownTableError(f"unknown published table {name!r}; choose one of {', '.join(TABLES)}")
    with resources.files("scaling.analysis").joinpath(f"published/{name}.csv").open() as fh:
        return pd.read_csv(fh)


def _approx_forward_gflops(row: pd.Series) -> float:
    # Fallback when the rung registry is unavailable: 2 FLOPs per parameter per token
    # (patch tokens + class token for the image tower, 77 tokens for the text tower).
    tokens = (row["image_size"] / 14) ** 2 + 1
    text = row["text_params_m"] if not math.isnan(row["text_params_m"]) else 0.0
    return 2e-3 * (row["image_params_m"] * tokens + text * 77)


def forward_gflops(model: str, image_size: int | None = None) -> float | None:
    """Forward GFLOPs (2 x multiply-adds) of one image-text pair from the cost model, or None."""
    name = REGISTRY_NAMES.get(model)
    if name is None:
        return None
    try:
        rung = get_rung(name)
        flops = costs.forward_flops(rung.vision, image_size=image_size)
        if rung.text is not None:
            flops += costs.forward_flops(rung.text)
        return flops / 1e9
    except Exception:  # the registry is optional here: fall back to the parameter estimate
        return None


def bubble_frame(metric: str = "img_cls_avg27") -> pd.DataFrame:
    """Published CLIP models with ``metric`` set, plus forward GFLOPs and total training compute.

    Columns added: ``forward_gflops`` (cost model, or 2 x params x tokens for the peers and when
    the rung files are missing), ``flops_source``, ``gflops_x_samples`` (bubble size, as in
    EVA-CLIP-18B Fig. 1) and ``peer`` (not an EVA model).
    """
    df = table("clip_models")
    if metric not in df.columns:
        raise KeyError(f"{metric!r} is not a column of clip_models; choose one of {', '.join(df.columns)}")
    df = df[df[metric].notna()].copy()
    gflops, origin = [], []
    for _, row in df.iterrows():
        value = forward_gflops(row["model"], int(row["image_size"]))
        gflops.append(value if value is not None else _approx_forward_gflops(row))
        origin.append("cost model" if value is not None else "2 x params x tokens")
    df["forward_gflops"] = gflops
    df["flops_source"] = origin
    df["gflops_x_samples"] = df["forward_gflops"] * df["samples_seen_b"] * 1e9
    df["peer"] = ~df["family"].str.startswith("EVA")
    return df.reset_index(drop=True)


def format_table(name: str) -> str:
    """A table as aligned text for the terminal (NaN shown as '-')."""
    df = table(name)
    shown = df.drop(columns=[c for c in ("source", "note") if c in df.columns])
    return f"{name}: {TABLES[name]}\n" + shown.to_string(index=False, na_rep="-")
