"""The TrV ablation end to end, reduced to two grid points and a few hundred samples per stage:
teacher CLIP trained once, then per trial MIM -> CLIP on two local workers, results in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling import tracking
from scaling.sweep.__main__ import main
from scaling.sweep.runner import absolutize
from scaling.sweep.spec import load_sweep
from scaling.sweep.storage import open_study

pytestmark = pytest.mark.slow

REDUCED = [
    "n_trials=2",
    "workers=2",
    "executor=local",
    "search_space.model.vision.norm=[layernorm, rmsnorm]",
    "search_space.model.vision.init=beit",
    "search_space.model.vision.mlp=swiglu",
    "search_space.model.vision.pos=rope",
    "base.overrides=[train.samples=256, train.batch_size=32, data.synth_samples=512, eval.every_samples=128, "
    "eval.max_samples=128]",
]


def test_reduced_trv_ablation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["trv_ablation", *REDUCED]) == 0
    out = capsys.readouterr().out
    assert "2/2 finished" in out and "clip/eval/synth_cls/top1" in out and "mim/eval/mim/loss" in out
    spec = absolutize(load_sweep("trv_ablation", REDUCED))
    trials = open_study(spec).get_trials()
    assert sorted(t.params["model.vision.norm"] for t in trials) == ["layernorm", "rmsnorm"]
    assert len(list(Path(spec.work_dir()).glob("teacher-*"))) == 1  # trained once, shared
    runs = tracking.find_runs(None, spec.experiment)
    children = [r for r in runs if r.data.tags.get("sweep_role") == "trial"]
    assert len(children) == 2
    for run in children:
        assert {"clip/eval/synth_cls/top1", "mim/eval/mim/loss", "cost/train_flops"} <= set(run.data.metrics)
        assert run.data.params["hp/model.vision.norm"] == run.data.params["mim.model.vision.norm"]
    assert len([r for r in runs if r.data.tags.get("sweep_role") == "teacher"]) == 1
    parent = next(r for r in runs if r.data.tags.get("sweep_role") == "study")
    artifacts = {a.path for a in tracking.client(None).list_artifacts(parent.info.run_id, "results")}
    assert "results/results.csv" in artifacts and parent.data.tags["best_trial"] in {"0", "1"}
