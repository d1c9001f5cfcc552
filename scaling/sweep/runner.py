"""Create or resume a study, train the shared teacher once, submit N workers, wait, report.

Everything that can be refused is checked before the first job is submitted. Re-running the
same command continues the same study (same name, same storage) until it holds its target.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from tqdm import tqdm

import scaling.sweep.runs as runs
from scaling import tracking
from scaling.config import fingerprint, flatten
from scaling.launch import LaunchError, make_executor, resolve_executor
from scaling.stage_state import stage_tags
from scaling.sweep.accounting import count
from scaling.sweep.pipeline import teacher_config, teacher_dir
from scaling.sweep.spec import SweepError, SweepSpec
from scaling.sweep.status import summarize, write_tables
from scaling.sweep.storage import open_storage, open_study
from scaling.sweep.trial import load_function
from scaling.sweep.worker import worker_entry
from scaling.tracking import ui
from scaling.train import run_stage
from scaling.uris import mask

log = logging.getLogger(__name__)


def absolutize(spec: SweepSpec) -> SweepSpec:
    """Absolute work folder and journal path, so that jobs started elsewhere find them."""
    workdir = str(spec.work_dir().resolve())
    storage = spec.storage
    if storage and "://" not in storage:
        storage = str(Path(storage).resolve())
    return dataclasses.replace(spec, workdir=workdir, storage=storage)


def worker_resources(spec: SweepSpec) -> dict[str, Any]:
    res = {"cpus_per_task": 1, "tasks_per_node": 1, "nodes": 1, "gpus_per_node": 0}
    per_worker = math.ceil(spec.n_trials / spec.workers)
    res["timeout_min"] = int(spec.timeout_min * per_worker) + 10
    res.update(spec.resources)
    return res


def prepare(spec: SweepSpec, executor: str | None = None, create: bool = True) -> tuple[SweepSpec, Any, str]:
    """Checks that need the outside world (storage, executor, function import); opens the study
    (creates it when ``create``, else only opens the storage)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = absolutize(spec)
    if spec.base.function:
        load_function(spec.base.function)
    try:
        kind = resolve_executor(executor or spec.executor)
    except LaunchError as exc:
        raise SweepError(str(exc)) from None
    study = open_study(spec, create=True) if create else open_storage(spec)
    return spec, study, kind


def announce(spec: SweepSpec, uri: str) -> None:
    """Describe the sweep's experiment, store its runs view (best trial first) and say where it is."""
    command = " ".join(["python -m scaling.sweep", *sys.argv[1:]])
    ui.describe_experiment(uri, spec.experiment,
                           f"**sweep {spec.name}** ({spec.path})\n\nLast run with: `{command}`\n\n"
                           "Each child run is one trial; the parent run carries the study's summary.")
    if spec.objectives:
        first = spec.objectives[0]
        ui.publish_view(uri, spec.experiment, [o.key for o in spec.objectives], ascending=first.direction == "minimize")
    print(*ui.where_to_look(uri, spec.experiment), sep="\n", file=sys.stderr)


def ensure_teacher(spec: SweepSpec, kind: str, uri: str, parent_run_id: str) -> str | None:
    """Train the pipeline's teacher CLIP once (cached by fingerprint in the sweep folder)."""
    cfg = teacher_config(spec)
    if cfg is None:
        path = teacher_dir(spec)
        if path and not Path(path).exists():
            raise SweepError(f"{spec.path}: base.teacher.checkpoint '{path}' does not exist")
        return path
    out = Path(cfg.out_dir)
    if (out / "final").exists():
        log.info("teacher already trained: %s", out)
        return str(out)

    print(f"training the teacher once: {cfg.stage.name} -> {out}", file=sys.stderr)
    executor = make_executor(kind, spec.work_dir() / "submitit" / "teacher", cfg.resources, f"{spec.name}-teacher")
    job = executor.submit(train_teacher, cfg, uri, spec.experiment, parent_run_id)
    job.result()
    return str(out)


def train_teacher(cfg: Any, uri: str, experiment: str, parent_run_id: str) -> str:
    """Job body: the teacher stage with its own child run of the study's parent run."""
    run_id = tracking.open_stage_run(
        uri, experiment, str(cfg.stage.name), fingerprint(cfg), parent_run_id=parent_run_id,
        tags=tracking.standard_tags(**stage_tags("clip", cfg.stage.rung), sweep_role="teacher"), params=flatten(cfg))
    with tracking.MlflowLogger(uri, run_id) as logger:  # FAILED if the stage raises
        return run_stage(cfg, logger=logger).out_dir


def submit_workers(spec: SweepSpec, kind: str, uri: str, parent_run_id: str) -> list[Any]:
    folder = spec.work_dir() / "submitit" / "workers"
    executor = make_executor(kind, folder, worker_resources(spec), f"sweep-{spec.name}",
                             array_parallelism=spec.workers)
    n = spec.workers
    return executor.map_array(worker_entry, [spec] * n, list(range(n)), [uri] * n, [parent_run_id] * n)


def wait(study: Any, spec: SweepSpec, jobs: list[Any], poll_s: float = 2.0) -> list[str]:
    """Follow the study (progress bar on stderr) until every worker job ended; returns errors."""
    bar = tqdm(total=spec.n_trials, desc=f"sweep {spec.name}", unit="trial", file=sys.stderr,
               disable=not sys.stderr.isatty())
    try:
        while True:
            c = count(study.get_trials(deepcopy=False))
            bar.n = min(c.finished, spec.n_trials)
            bar.set_postfix(running=c.running, pruned=c.pruned, failed=c.fail)
            bar.refresh()
            if all(j.done() for j in jobs):
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    errors = []
    for i, job in enumerate(jobs):
        exc = job.exception()
        if exc is not None:
            errors.append(f"worker {i} (job {job.job_id}) ended with an error: {str(exc).strip().splitlines()[-1:]}")
    return errors


def finalize(study: Any, spec: SweepSpec, uri: str, parent_run_id: str | None) -> dict[str, Any]:
    """Tables in the sweep folder and on the parent run; best trial / Pareto front as tags."""
    summary = summarize(study, spec)
    files = write_tables(summary, spec, spec.work_dir())
    done = summary["counts"]["COMPLETE"] + summary["counts"]["PRUNED"] >= spec.n_trials
    if parent_run_id:
        runs.finish_parent_run(uri, parent_run_id, spec, summary, files, done)
    return summary


def run_sweep(spec: SweepSpec, executor: str | None = None, detach: bool = False) -> dict[str, Any]:
    """Create/resume the study and run it to ``n_trials`` finished trials (see module doc)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    spec, study, kind = prepare(spec, executor)
    uri = tracking.resolve_uri(spec.tracking.get("uri"))
    parent = runs.start_parent_run(spec, uri, study.user_attrs.get("mlflow_parent_run_id"))
    study.set_user_attr("mlflow_parent_run_id", parent)
    study.set_user_attr("mlflow_uri", mask(uri))  # a record: no password
    announce(spec, uri)
    study.set_user_attr("sweep_file", str(spec.path))
    if spec.base.teacher is not None:
        # Every trial of a study uses the same teacher, even if its config's fingerprint moved
        # since (code or recipe changes): workers get its path, they do not recompute it.
        recorded = study.user_attrs.get("teacher")
        if recorded and spec.base.teacher.rung and (Path(recorded) / "final").exists():
            print(f"reusing the study's teacher: {recorded}", file=sys.stderr)
            teacher = recorded
        else:
            teacher = ensure_teacher(spec, kind, uri, parent)
        study.set_user_attr("teacher", teacher)
        spec = dataclasses.replace(spec, teacher_path=teacher)
    jobs = submit_workers(spec, kind, uri, parent)
    print(f"sweep {spec.name}: {len(jobs)} {kind} worker(s) submitted ({', '.join(str(j.job_id) for j in jobs)}); "
          f"storage {spec.storage_label()}; MLflow {mask(uri)} experiment '{spec.experiment}' parent run {parent}",
          file=sys.stderr)
    if detach:
        return {"detached": True, "jobs": [str(j.job_id) for j in jobs], "parent_run_id": parent}
    errors = wait(study, spec, jobs)
    for line in errors:
        print(line, file=sys.stderr)
    summary = finalize(study, spec, uri, parent)
    summary["errors"] = errors
    summary["parent_run_id"] = parent
    return summary
