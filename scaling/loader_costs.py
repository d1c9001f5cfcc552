"""Loader cores a GPU needs: the samples/s a stage plans per GPU over what one loader core delivers.

``benchmarks/bench_data.py`` measures the training stream's samples per CPU-second on one core at
real image sizes (224 px crops from 256 px JPEG, and so on) and writes them to a small JSON file
(``SCALING_DATA_THROUGHPUT``, default ``.cache/data-throughput.json`` in the repository); where it
never ran, the figures measured on the development machine below stand in. The planner divides a
stage's samples/s per GPU (``scaling.costs`` at the plan's MFU) by the figure at the stage's image
size. No torch here: the dry run imports this.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from scaling.paths import REPO_ROOT

# Samples per CPU-second of one core, training stream from 256 / 384 / 512 px JPEG shards
# (img2dataset layout) to 224 / 336 / 448 px crops, tokenised, batches of 64: bench_data.py on
# the 2-core development machine (AMD EPYC, shared: load 12-25), 2026-12-01, rounded down.
DEFAULT_SAMPLES_PER_CORE: dict[int, float] = {224: 400.0, 336: 190.0, 448: 110.0}
DEFAULT_SOURCE = "built-in figures (development machine, 2026-12-01)"


def figures_path() -> Path:
    return Path(os.environ.get("SCALING_DATA_THROUGHPUT", REPO_ROOT / ".cache" / "data-throughput.json"))


def write_figures(samples_per_core: dict[int, float], path: str | os.PathLike | None = None,
                  **info: Any) -> Path:
    """Write measured ``{image size: samples per CPU-second}`` (with ``info``: machine, load...)."""
    out = Path(path) if path is not None else figures_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"samples_per_core": {str(k): float(v) for k, v in sorted(samples_per_core.items())},
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)
    return out


def load_figures(path: str | os.PathLike | None = None) -> tuple[dict[int, float], str]:
    """(figures, where they come from): the benchmark's file if there is a readable one, else the
    built-in defaults."""
    src = Path(path) if path is not None else figures_path()
    try:
        doc = json.loads(src.read_text())
        figures = {int(k): float(v) for k, v in doc["samples_per_core"].items() if float(v) > 0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return dict(DEFAULT_SAMPLES_PER_CORE), DEFAULT_SOURCE
    if not figures:
        return dict(DEFAULT_SAMPLES_PER_CORE), DEFAULT_SOURCE
    return figures, f"{src} ({doc.get('written', 'undated')})"


def samples_per_core(image_size: int, figures: dict[int, float] | None = None) -> float:
    """Samples/s one loader core delivers at ``image_size``: the measured figure, or the nearest
    measured size's scaled by the pixel count (decoding and resizing cost per pixel)."""
    figures = figures if figures is not None else load_figures()[0]
    if image_size in figures:
        return figures[image_size]
    nearest = min(figures, key=lambda s: abs(s - image_size))
    return figures[nearest] * (nearest / image_size) ** 2


def loader_cores(samples_per_s_per_gpu: float, image_size: int, cpus_per_task: int,
                 figures: dict[int, float] | None = None) -> dict[str, Any]:
    """``loader_cores_per_gpu`` (planned samples/s per GPU / samples/s per core) and, when that
    is more than the ``cpus_per_task`` a GPU's task gets, ``loader_warning`` saying so."""
    per_core = samples_per_core(image_size, figures)
    need = samples_per_s_per_gpu / per_core
    out: dict[str, Any] = {"samples_per_s_per_gpu": samples_per_s_per_gpu,
                           "loader_samples_per_core": per_core,
                           "loader_cores_per_gpu": need, "loader_warning": None}
    if need > cpus_per_task:
        out["loader_warning"] = (
            f"needs {need:.1f} loader cores per GPU ({samples_per_s_per_gpu:.0f} samples/s per GPU at "
            f"{image_size} px, {per_core:.0f} samples/s per core) but resources.cpus_per_task gives "
            f"{cpus_per_task}: the GPUs would wait for data; raise resources.cpus_per_task (and "
            "data.workers), or measure this cluster's cores with benchmarks/bench_data.py"
        )
    return out
