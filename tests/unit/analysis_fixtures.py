"""A small real MLflow store shaped like the ladder's and the sweep's records (test data).

Ladder: one parent run, child stages ``clip@B16 -> mim@L14 -> clip@L14 -> mim@E14 -> clip@E14``
(proxy rungs) with the lineage tags, flattened params and metric histories whose final errors
follow ``err = A * C^ALPHA`` in training compute. Sweep: a study parent run and trials with
``hp/*`` params, Optuna tags and states (complete, pruned, failed).
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

LADDER_EXPERIMENT = "ladder-test"
SWEEP_EXPERIMENT = "sweep-test"
STUDY = "clip-lr"
ALPHA = -0.12  # exponent of the synthetic error law
SAMPLES = {"B16": 40_000, "L14": 60_000, "E14": 90_000}
BATCH = 1000


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(mlc, name: str, root: Path) -> str:
    exp = mlc.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlc.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())


def _flops(rung: str, kind: str, samples: float, teacher: str | None = None) -> float:
    from scaling import costs
    from scaling.models.registry import get_rung

    t = get_rung(teacher, proxy=True) if teacher else None
    return costs.train_flops(get_rung(rung, proxy=True), kind, samples, patch_dropout=0.5, teacher=t)


def _stage(mlc, exp_id: str, parent: str, t0: int, *, kind: str, rung: str, teacher: str | None = None,
           teacher_run: str | None = None, init_run: str | None = None, err0: float = 0.6,
           status: str = "FINISHED", evals: int = 4) -> str:  # fmt: skip
    name = f"{kind}@{rung}"
    # as the ladder logs them: stage = "kind@rung", kind = "mim" | "clip"
    tags = {"mlflow.parentRunId": parent, "mlflow.runName": name, "stage": name, "rung": rung, "kind": kind,
            "proxy": "true", "fingerprint": f"fp-{name}"}  # fmt: skip
    if teacher_run:
        tags["teacher_run_id"] = teacher_run
    if init_run:
        tags["init_run_id"] = init_run
    run = mlc.create_run(exp_id, start_time=t0, tags=tags, run_name=name)
    rid = run.info.run_id
    samples = SAMPLES[rung]
    params = {"stage.kind": kind, "stage.rung": rung, "stage.proxy": "True", "train.samples": str(samples),
              "train.batch_size": str(BATCH), "model.patch_dropout": "0.5" if kind == "clip" else "0.0",
              "loss.mask_ratio": "0.4", "optim.name": "lamb" if kind == "clip" else "adamw"}  # fmt: skip
    if teacher:
        params["stage.teacher_rung"] = teacher
    for k, v in params.items():
        mlc.log_param(rid, k, v)
    from mlflow.entities import Metric

    steps = samples // BATCH
    if status != "FINISHED":
        steps //= 2
    per_sample = _flops(rung, kind, 1.0, teacher)
    metrics = []
    for step in range(1, steps + 1):
        ts = t0 + step * 100
        seen = step * BATCH
        metrics.append(Metric("train/samples_seen", seen, ts, step))
        metrics.append(Metric("train/loss", 4.0 * (seen / 1000) ** -0.3 + 0.1 * (kind == "mim"), ts, step))
        if step % max(1, steps // evals) == 0 or step == steps:
            c = per_sample * seen
            if kind == "clip":
                # final points follow err0 * (C / 1e12)^ALPHA; earlier evals are worse
                err = err0 * (per_sample * samples / 1e12) ** ALPHA * (samples / seen) ** 0.25
                metrics.append(Metric("eval/synth_cls/top1", max(0.0, 1 - min(err, 1.0)), ts, step))
            else:
                metrics.append(Metric("eval/mim/loss", -0.9 + 0.3 * (c / 1e12) ** -0.1, ts, step))
    for i in range(0, len(metrics), 900):
        mlc.log_batch(rid, metrics=metrics[i:i + 900])
    mlc.set_terminated(rid, status, end_time=t0 + (steps + 1) * 100)
    return rid


def build_ladder(uri: str, root: Path, experiment: str = LADDER_EXPERIMENT) -> dict[str, str]:
    """The ladder experiment; returns ``{stage: run_id}`` (and ``parent``)."""
    mlc = _client(uri)
    exp_id = _experiment(mlc, experiment, root)
    t0 = int(time.time() * 1000) - 10_000_000
    parent = mlc.create_run(exp_id, start_time=t0, run_name="ladder B16->E14",
                            tags={"ladder": experiment, "mlflow.runName": "ladder B16->E14"}).info.run_id  # fmt: skip
    ids = {"parent": parent}
    ids["clip@B16"] = _stage(mlc, exp_id, parent, t0 + 1000, kind="clip", rung="B16")
    ids["mim@L14"] = _stage(mlc, exp_id, parent, t0 + 2000, kind="mim", rung="L14", teacher="B16",
                            teacher_run=ids["clip@B16"])  # fmt: skip
    # a CLIP stage's teacher_run_id is the CLIP its text tower starts from
    ids["clip@L14"] = _stage(mlc, exp_id, parent, t0 + 3000, kind="clip", rung="L14", init_run=ids["mim@L14"],
                             teacher_run=ids["clip@B16"])  # fmt: skip
    ids["mim@E14"] = _stage(mlc, exp_id, parent, t0 + 4000, kind="mim", rung="E14", teacher="L14",
                            teacher_run=ids["clip@L14"])  # fmt: skip
    ids["clip@E14"] = _stage(mlc, exp_id, parent, t0 + 5000, kind="clip", rung="E14", init_run=ids["mim@E14"],
                             teacher_run=ids["clip@L14"])  # fmt: skip
    mlc.set_terminated(parent, "FINISHED", end_time=t0 + 9_000_000)
    return ids


def objective(lr: float, dropout: float, mlp: str) -> float:
    """The synthetic sweep's response surface: best near lr = 1e-3, dropout 0.5, swiglu."""
    return 0.8 - 0.08 * (math.log10(lr) + 3) ** 2 - 0.2 * (dropout - 0.5) ** 2 - 0.03 * (mlp == "gelu")


def build_sweep(uri: str, root: Path, experiment: str = SWEEP_EXPERIMENT, n_trials: int = 12) -> dict[str, str]:
    """The sweep experiment; returns ``{'parent': id, 'trial-<n>': id, ...}``."""
    mlc = _client(uri)
    exp_id = _experiment(mlc, experiment, root)
    rng = random.Random(0)
    t0 = int(time.time() * 1000) - 5_000_000
    parent = mlc.create_run(exp_id, start_time=t0, run_name=f"sweep:{STUDY}", tags={
        "optuna_study": STUDY, "objectives": "eval/synth_cls/top1 (maximize)", "sweep_role": "study",
        "mlflow.runName": f"sweep:{STUDY}"}).info.run_id  # fmt: skip
    for k, v in {"search_space.lr": "float[0.0001, 0.01] log", "search_space.patch_dropout": "float[0.0, 0.75]",
                 "search_space.mlp": '["swiglu", "gelu"]'}.items():  # fmt: skip
        mlc.log_param(parent, k, v)
    ids = {"parent": parent}
    from mlflow.entities import Metric

    for n in range(n_trials):
        lr, dropout, mlp = 10 ** rng.uniform(-4, -2), rng.uniform(0, 0.75), rng.choice(["swiglu", "gelu"])
        state = "FAIL" if n == 5 else "PRUNED" if n in (3, 8) else "COMPLETE"
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[state]
        start = t0 + n * 10_000
        run = mlc.create_run(exp_id, start_time=start, run_name=f"trial-{n}", tags={
            "mlflow.parentRunId": parent, "optuna_study": STUDY, "optuna_trial_number": str(n),
            "optuna_state": state, "sweep_role": "trial", "rung": "B16", "stage": "clip",
            "mlflow.runName": f"trial-{n}"})  # fmt: skip
        rid = run.info.run_id
        for k, v in {"hp/lr": lr, "hp/patch_dropout": dropout, "hp/mlp": mlp, "stage.kind": "clip",
                     "stage.rung": "B16", "stage.proxy": "True"}.items():  # fmt: skip
            mlc.log_param(rid, k, str(v))
        if state != "FAIL":
            final = objective(lr, dropout, mlp) + rng.gauss(0, 0.005)
            if state == "PRUNED":
                final -= 0.1
            mlc.log_batch(rid, metrics=[Metric("eval/synth_cls/top1", final * s / 3, start + s, s) for s in (1, 2, 3)]
                          + [Metric("train/samples_seen", 1000 * s, start + s, s) for s in (1, 2, 3)])  # fmt: skip
        mlc.set_terminated(rid, status, end_time=start + 5000)
        ids[f"trial-{n}"] = rid
    mlc.set_terminated(parent, "FINISHED", end_time=t0 + n_trials * 10_000 + 1)
    return ids


def build_store(root: Path) -> str:
    """Both experiments in ``root/mlflow.db``; returns the tracking URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    build_ladder(uri, root)
    build_sweep(uri, root)
    return uri


_STORES: dict[str, str] = {}


def shared_store(tmp_path_factory) -> str:
    """One store per test session (creating an MLflow database takes seconds), built on first use."""
    if "uri" not in _STORES:
        _STORES["uri"] = build_store(tmp_path_factory.mktemp("analysis_store"))
    return _STORES["uri"]
