"""CLIP_benchmark interop end to end: a proxy CLIP stage trained (real trainer, real MLflow store)
with a made-up set in CLIP_benchmark's webdataset layout as its eval sets, exported with
``python -m scaling.export``, evaluated by the real ``clip_benchmark eval`` CLI, its results
logged back to the stage's run; the two evaluations of the same set and weights agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("clip_benchmark", reason="clip-benchmark is not installed (pip install -e '.[benchmark]')")
from clip_benchmark.datasets.builder import build_dataset  # noqa: E402
from clip_benchmark.metrics.zeroshot_classification import (  # noqa: E402
    run_classification,
    zero_shot_classifier,
)
from clip_benchmark.models import load_clip  # noqa: E402

from scaling.export.benchmark import command  # noqa: E402
from scaling.paths import REPO_ROOT  # noqa: E402
from scaling.stage_state import stage_run_id  # noqa: E402
from tests.unit import clip_benchmark_fixtures as fx  # noqa: E402

pytestmark = pytest.mark.integration
CLIP_BENCHMARK = Path(sys.executable).parent / "clip_benchmark"
# clip_benchmark 1.6.2's zero-shot ``accuracy`` calls float() on a one-element array, which
# NumPy 2.4 turned from a deprecation into a TypeError: its classification cannot run there.
NUMPY_SCALAR_ERROR = "only 0-dimensional arrays can be converted to Python scalars"


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    if not CLIP_BENCHMARK.exists():
        pytest.skip(f"clip-benchmark's CLI is not beside this interpreter ({CLIP_BENCHMARK})")
    root = tmp_path_factory.mktemp("benchmark")
    sets = {"cls": fx.classification_set(root), "ret": fx.retrieval_set(root)}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    stage = root / "clip"
    out = run(sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(stage),
              "--mlflow", "--quiet", f"tracking.uri={uri}", f"data.cache_dir={root / 'synth'}",
              "data.synth_samples=128", "train.batch_size=16", "train.samples=64",
              f"eval.classification={sets['cls']}", f"eval.retrieval={sets['ret']}")
    assert out.returncode == 0, out.stderr[-2000:]
    return {"root": root, "stage": stage, "uri": uri, "sets": sets}


def test_export_benchmark_and_log_back(trained: dict) -> None:
    from mlflow.tracking import MlflowClient

    root, stage = trained["root"], trained["stage"]
    model = root / "open_clip"
    out = run(sys.executable, "-m", "scaling.export", str(stage), "--format", "open_clip", "--out", str(model))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max |difference| 0.00e+00" in out.stdout  # open_clip's model reproduces the stage's embeddings
    info = json.loads((model / "export.json").read_text())
    assert info["stage"] == "clip@B16" and info["open_clip_model"] is None  # a proxy has no built-in name

    results, broken = [], []
    for key, folder in trained["sets"].items():
        path = root / f"{key}.json"
        bench = run(*command(model, folder, path, program=str(CLIP_BENCHMARK)))
        if bench.returncode != 0:
            assert NUMPY_SCALAR_ERROR in bench.stderr and key == "cls", bench.stderr[-2000:]
            broken.append(key)
            continue
        results.append(str(path))
    logged = run(sys.executable, "-m", "scaling.export", str(stage), "--log-results", *results)
    assert logged.returncode == 0, logged.stderr[-2000:]

    metrics = MlflowClient(trained["uri"]).get_run(stage_run_id(stage)).data.metrics
    names = {"cls": ("tiny-shapes", ("top1",)),  # 3 classes: CLIP_benchmark reports no top-5
             "ret": ("tiny-captions", ("image_r1", "image_r5", "image_r10", "text_r1", "text_r5", "text_r10"))}
    for key, (name, wanted) in names.items():
        if key in broken:
            continue
        for metric in wanted:
            ours, theirs = metrics[f"eval/{name}/{metric}"], metrics[f"benchmark/{name}/{metric}"]
            assert theirs == pytest.approx(ours, abs=1e-6), (name, metric)
    assert "benchmark/tiny-captions/image_r5" in metrics
    if broken:
        assert tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4)
        # CLIP_benchmark's own model loading, dataset reading, classifier and logits (what its CLI
        # runs up to the broken accuracy step): the top-1 of its logits is the stage's own
        assert clip_benchmark_top1(model, trained["sets"]["cls"]) == pytest.approx(
            metrics["eval/tiny-shapes/top1"], abs=1e-6)
        pytest.xfail(f"clip_benchmark's classification fails under NumPy {np.__version__} ({NUMPY_SCALAR_ERROR}); "
                     "retrieval agreed, and the top-1 of its classification logits")


def clip_benchmark_top1(model: Path, folder: Path) -> float:
    clip, transform, tokenizer = load_clip("open_clip", f"local-dir:{model}", "export", None, "cpu")
    clip.eval()
    data = build_dataset("wds/" + folder.name.removeprefix("wds_"), root=str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(data.batched(64), batch_size=None, num_workers=0)
    classifier = zero_shot_classifier(clip, tokenizer, data.classes, data.templates, "cpu", amp=False)
    logits, target = run_classification(clip, classifier, loader, "cpu", amp=False)
    return float((logits.argmax(dim=1) == target).float().mean())


def test_wrong_stage_or_folder_exits_2(trained: dict, tmp_path: Path) -> None:
    for target in (str(tmp_path), "clip@B16", "not-a-stage", str(trained["sets"]["cls"])):
        out = run(sys.executable, "-m", "scaling.export", target, "--runs-dir", str(tmp_path))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().count("\n") == 0
