"""What the notebooks in ``analysis/`` share: the store and report folder found from any working
directory, training curves against samples seen, and figures saved as the report saves them.

A kernel starts in the notebook's folder (``jupyter lab analysis/``), not where ``make ladder``
wrote ``mlflow.db`` and ``reports/``: the project folder is found by walking up from the working
directory, so a notebook opened anywhere inside the project reads the ladder's store.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.analysis import load
from scaling.paths import REPO_ROOT
from scaling.uris import mask

STORE_FILE = "mlflow.db"  # where make ladder / make ui keep the store, in the project folder
REPORT_FORMATS = ("png", "svg")  # what python -m scaling.analysis report writes: a rerun replaces both


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding
    ``mlflow.db`` or the project's ``pyproject.toml``; else the folder of this checkout."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STORE_FILE).is_file() or ((folder / "pyproject.toml").is_file() and (folder / "scaling").is_dir()):
            return folder
    return REPO_ROOT


def tracking_uri(uri: str | None = None, start: str | os.PathLike | None = None) -> str:
    """The argument, else ``$MLFLOW_TRACKING_URI``, else the project folder's ``mlflow.db``."""
    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return load.resolve_uri(uri)
    return load.resolve_uri(str(project_root(start) / STORE_FILE))


def report_dir(experiment: str, out_dir: str | os.PathLike | None = None,
               start: str | os.PathLike | None = None) -> Path:
    """Where the report of ``experiment`` lives (``<project>/reports/<experiment>``), unless given."""
    return Path(out_dir) if out_dir else project_root(start) / "reports" / experiment


def has_experiment(uri: str, experiment: str, how: str) -> bool:
    """Whether the store has ``experiment``; if not, say so and ``how`` to make it, so a notebook
    opened before its experiment exists runs to the end and shows nothing instead of failing."""
    try:
        load.experiment_ids(load.client(uri), experiment)
        return True
    except load.AnalysisError as exc:
        print(f"{exc} in {mask(uri)}: {how}; the cells below show nothing until it exists")
        return False


def curves(uri: str, runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Metric histories of ``runs`` (long: ``label``, ``key``, ``step``, ``samples``, ``value``),
    with samples seen on x (the step of each point mapped through ``train/samples_seen``), so
    stages of different batch sizes line up."""
    frames = []
    for _, run in runs.iterrows():
        seen = load.metric_history(uri, run["run_id"], "train/samples_seen")
        for key in keys:
            hist = load.metric_history(uri, run["run_id"], key)
            if hist.empty:
                continue
            samples = (np.interp(hist["step"], seen["step"], seen["value"]) if not seen.empty
                       else np.full(len(hist), np.nan))
            frames.append(hist.assign(label=run.get("label") or run["run_id"][:8], samples=samples))
    if not frames:
        return pd.DataFrame(columns=["label", "key", "step", "samples", "value", "run_id"])
    return pd.concat(frames, ignore_index=True)[["label", "key", "step", "samples", "value", "run_id"]]


def save_figure(fig, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Save ``fig`` beside the report's figures in every format the report writes."""
    from scaling.analysis.plots.style import save  # matplotlib: loads with the first figure

    return save(fig, out_dir, name, REPORT_FORMATS)
