"""CLIP_benchmark on an exported stage: the command that runs it, and its results logged back to
the stage's MLflow run as ``benchmark/<set>/<metric>``, named as the toolkit's own evaluation names
them (``eval/<set>/<metric>``) so that the two sit side by side and can be compared."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

from scaling.data.clip_benchmark import dataset_type
from scaling.export.errors import ExportError
from scaling.export.stage import FinishedStage
from scaling.stages import WDS_PREFIX, eval_set_name
from scaling.tracking import store

PREFIX = "benchmark"
# CLIP_benchmark's metric names -> the toolkit's (``scaling.stages``); '@' is not allowed by MLflow.
RENAMES = {"acc1": "top1", "acc5": "top5"}
_RECALL = re.compile(r"^(image|text)_retrieval_recall@(\d+)$")


def dataset_name(folder: str | Path) -> str:
    """CLIP_benchmark's ``--dataset`` for a webdataset folder: ``wds_vtab-cifar10`` -> ``wds/vtab-cifar10``."""
    return "wds/" + Path(folder).name.removeprefix(WDS_PREFIX)


def command(model_dir: str | Path, folder: str | Path, output: str | Path, split: str = "test",
            batch_size: int = 64, program: str = "clip_benchmark") -> list[str]:
    """``clip_benchmark eval`` argv for an exported model and a CLIP_benchmark webdataset folder.
    ``--no_amp``: full precision, as the toolkit evaluates (AMP on CPU would run in bfloat16)."""
    task = "zeroshot_retrieval" if dataset_type(folder) == "retrieval" else "zeroshot_classification"
    return [program, "eval", "--model", f"local-dir:{Path(model_dir).resolve()}", "--pretrained", "export",
            "--dataset", dataset_name(folder), "--dataset_root", str(Path(folder).resolve()), "--split", split,
            "--task", task, "--recall_k", "1", "5", "10", "--no_amp", "--num_workers", "0",
            "--batch_size", str(batch_size), "--output", str(output)]


def metric_name(name: str) -> str:
    match = _RECALL.match(name)
    if match:
        return f"{match.group(1)}_r{match.group(2)}"
    return RENAMES.get(name, name.replace("@", "_at_"))


def read_results(path: str | Path) -> tuple[str, dict[str, float]]:
    """``(set name, {metric: value})`` of one CLIP_benchmark results JSON."""
    try:
        data = json.loads(Path(path).read_text())
        dataset, metrics = str(data["dataset"]), data["metrics"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: not a clip_benchmark results file ({type(exc).__name__}: {exc})") from None
    name = eval_set_name(dataset.removeprefix("wds/").replace("/", "-"), False, "benchmark")
    # CLIP_benchmark reports acc5 as NaN for sets of fewer than 5 classes: not a result, not logged
    return name, {metric_name(k): float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not math.isnan(v)}


def log_results(stage: FinishedStage, files: Sequence[str | Path], uri: str | None = None) -> dict[str, float]:
    """Log every results file to the stage's MLflow run at its final samples-seen step."""
    from mlflow.entities import Metric  # MLflow loads when results are logged: --help stays instant

    if stage.run_id is None:
        raise ExportError(f"{stage.out_dir} records no MLflow run (train it with --mlflow, or by the ladder)")
    metrics: dict[str, float] = {}
    for path in files:
        name, values = read_results(path)
        metrics |= {f"{PREFIX}/{name}/{k}": v for k, v in values.items()}
    uri = store.resolve_uri(uri or stage.cfg.tracking.uri)
    step, now = int(stage.manifest.get("samples_seen", 0)), int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in metrics.items()]
    store.with_retries(lambda: store.client(uri).log_batch(stage.run_id, metrics=batch, synchronous=True))
    return metrics
