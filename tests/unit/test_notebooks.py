"""The notebooks in analysis/ run top to bottom (nbclient) against a small MLflow store."""

from __future__ import annotations

import json
import sys
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


def _execute(name: str, experiment: str, store: str, kernel_dir: Path, out: Path, monkeypatch) -> list:
    """Run as a user opens it: the kernel in analysis/, the store from $MLFLOW_TRACKING_URI; its outputs."""
    import nbformat
    from nbclient import NotebookClient

    for key, value in (("JUPYTER_PATH", str(kernel_dir)), ("MLFLOW_TRACKING_URI", store),
                       ("MLFLOW_DISABLE_TELEMETRY", "true"), ("MPLCONFIGDIR", str(out.parent / "mpl")),
                       ("PYTHONPATH", str(REPO_ROOT))):
        monkeypatch.setenv(key, value)
    nb = nbformat.read(REPO_ROOT / "analysis" / name, as_version=4)
    # Papermill-style injection: a cell after the tagged parameters cell overrides the defaults.
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(f"EXPERIMENT = {experiment!r}\nOUT_DIR = {str(out)!r}"))
    NotebookClient(nb, kernel_name=KERNEL, timeout=120,
                   resources={"metadata": {"path": str(REPO_ROOT / "analysis")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert [o for o in outputs if o.output_type == "error"] == []
    return outputs


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name: str, store: str, kernel_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    outputs = _execute(name, NOTEBOOKS[name], store, kernel_dir, out, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "the notebook shows the report's figures"
    written: dict[str, set[str]] = {}
    for p in out.iterdir():
        if p.suffix in (".png", ".svg"):
            written.setdefault(p.stem, set()).add(p.suffix)
    assert written and all(s == {".png", ".svg"} for s in written.values()), written  # no stale format
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert f"tracking URI: {store}" in text
    if name == "scaling_report.ipynb":  # its own analysis: curves, a fit with its interval, the table
        assert "90 % interval" in text and "no fit" not in text
        assert "predicted" in text and "achieved" in text
        assert {"notebook_curves", "notebook_fit"} <= set(written)


def test_a_notebook_whose_experiment_is_not_there_yet_says_how_to_make_it(store: str, kernel_dir: Path,
                                                                        tmp_path: Path, monkeypatch) -> None:
    # After `make ladder` the store has the ladder's experiment only: the sweep notebook still runs
    # to the end (as `make notebooks` runs every notebook) and says what to run first.
    outputs = _execute("sweep_report.ipynb", "sweep-not-run-yet", store, kernel_dir, tmp_path / "out", monkeypatch)
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "no MLflow experiment named 'sweep-not-run-yet'" in text and "python -m scaling.sweep" in text, text
    assert not (tmp_path / "out").exists()  # no empty report written for it


def test_project_folder_is_found_from_a_subfolder(tmp_path: Path, monkeypatch) -> None:
    from scaling.analysis import notebook

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.db").write_bytes(b"")
    sub = tmp_path / "analysis" / "deeper"
    sub.mkdir(parents=True)
    assert notebook.project_root(sub) == tmp_path.resolve()
    assert notebook.tracking_uri(start=sub) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert notebook.report_dir("ladder-eva", start=sub) == tmp_path.resolve() / "reports" / "ladder-eva"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert notebook.tracking_uri(start=sub) == "http://127.0.0.1:5999"
