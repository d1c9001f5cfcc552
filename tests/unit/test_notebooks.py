"""The notebooks in analysis/ run top to bottom (nbclient) against a small MLflow store."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from scaling.paths import REPO_ROOT
from tests.unit import analysis_fixtures as fx
from tests.unit import study_fixtures as sf

NOTEBOOKS = {
    "scaling_report.ipynb": fx.LADDER_EXPERIMENT,
    "sweep_report.ipynb": fx.SWEEP_EXPERIMENT,
    "weak_to_strong.ipynb": sf.EXPERIMENT,
}
KERNEL = "scaling-test-python"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = fx.shared_store(tmp_path_factory)
    from mlflow.tracking import MlflowClient

    if MlflowClient(tracking_uri=uri).get_experiment_by_name(sf.EXPERIMENT) is None:
        sf.build_study(uri, tmp_path_factory.mktemp("w2s_artifacts"))  # a study beside the ladder
    return uri


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernelspec for this interpreter in a temporary JUPYTER_PATH (never the user's)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scaling tests", "language": "python",
    }))  # fmt: skip
    return root


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = json.loads((REPO_ROOT / "analysis" / name).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, name
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "TRACKING_URI" in "".join(tagged[0]["source"])


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name: str, store: str, kernel_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    nb = nbformat.read(REPO_ROOT / "analysis" / name, as_version=4)
    # Papermill-style injection: a cell after the tagged parameters cell overrides the defaults.
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    inject = (f"TRACKING_URI = {store!r}\nEXPERIMENT = {NOTEBOOKS[name]!r}\n"
              f"OUT_DIR = {str(tmp_path / 'out')!r}")  # fmt: skip
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(inject))
    start = time.monotonic()
    NotebookClient(nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.monotonic() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "the notebook shows the report's figures"
    assert any(p.suffix == ".png" for p in (tmp_path / "out").iterdir())
    assert elapsed < 90, f"{name} took {elapsed:.0f} s"
