"""A sweep whose workers are a SLURM job array on the real local cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scaling import tracking
from scaling.sweep.runner import absolutize, run_sweep
from scaling.sweep.spec import load_sweep
from scaling.sweep.storage import open_study

pytestmark = pytest.mark.integration


def test_sweep_workers_as_a_slurm_job_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            slurm_cluster) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "array.yaml"
    path.write_text(yaml.safe_dump({
        "name": "array",
        "base": {"function": "scaling.sweep.toy:quadratic"},
        "search_space": {"x": {"type": "float", "low": -5, "high": 5}, "steps": 2},
        "objectives": [{"metric": "loss", "direction": "minimize"}],
        "sampler": {"name": "tpe", "seed": 1},
        "n_trials": 6,
        "workers": 2,
        "executor": "slurm",
        "resources": {"partition": "debug", "cpus_per_task": 1, "timeout_min": 10},
        "tracking": {"uri": uri},
    }))
    spec = load_sweep(path)
    summary = run_sweep(spec)
    assert summary["errors"] == []
    assert summary["counts"]["COMPLETE"] == 6
    trials = open_study(absolutize(spec)).get_trials()
    assert len(trials) == 6
    jobs = {str(t.user_attrs.get("worker")) for t in trials}
    assert jobs <= {"0", "1"}
    runs = [r for r in tracking.find_runs(uri, spec.experiment) if r.data.tags.get("sweep_role") == "trial"]
    assert len(runs) == 6
    # Each child run records the array task that ran it: <array job id>_<task index>.
    slurm_ids = {r.data.tags["slurm_job_id"] for r in runs}
    assert all("_" in s for s in slurm_ids) and len({s.split("_")[0] for s in slurm_ids}) == 1
    assert [f.name for f in (Path(spec.work_dir()).resolve() / "submitit" / "workers").glob("*_submitted.pkl")]
