"""Optuna ablation sweeps over stages: asynchronous workers (local, SLURM job array, debug),
pruning on intermediate zero-shot metrics, resumable studies, every trial live in MLflow.

``python -m scaling.sweep sweeps/trv_ablation.yaml [key=value ...]`` runs a sweep;
``python -m scaling.sweep status sweeps/trv_ablation.yaml`` shows where it stands.
Importing this package stays cheap (no optuna, mlflow or torch until used).
"""

from scaling.sweep.spec import SweepError, SweepSpec, load_sweep

__all__ = ["SweepError", "SweepSpec", "load_sweep", "run_sweep", "study_status"]


def run_sweep(spec: SweepSpec, executor: str | None = None, detach: bool = False) -> dict:
    # optuna, submitit and the trial code load on use: the sweep file's loader imports this package
    from scaling.sweep.runner import run_sweep as _run

    return _run(spec, executor=executor, detach=detach)


def study_status(spec: SweepSpec) -> dict:
    """Counts by state, best trial(s) and every trial's summary, read from the study's storage."""
    # as above: optuna on use
    from scaling.sweep.runner import absolutize
    from scaling.sweep.status import summarize
    from scaling.sweep.storage import open_study

    spec = absolutize(spec)
    return summarize(open_study(spec), spec)
