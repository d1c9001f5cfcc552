"""MLflow (any tracking URI) -> pandas: one row per run, metric histories on demand.

Columns follow ``mlflow.search_runs``: ``params.<dotted.key>``, ``metrics.<key>`` (last value),
``tags.<key>``; plus plain columns for what the analysis uses most: ``run_id``, ``experiment``,
``run_name``, ``status``, ``start_time``, ``end_time``, ``duration_s``, ``parent_run_id``,
``is_parent``, ``label`` (e.g. ``clip@18B``), the lineage tags (``rung``, ``stage``, ``kind``, ``proxy``,
``fingerprint``, ``teacher_run_id``, ``init_run_id``), the sweep tags (``optuna_study``,
``optuna_trial_number``, ``optuna_state``) and the cost columns ``n_params``, ``flops`` and ``flops_source``.
Reads through ``scaling.tracking.store`` (mlflow is imported only when a function here is
called) and never creates a store: a SQLite file that does not exist is an ``AnalysisError``.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import pandas as pd

from scaling import costs
from scaling.kinds import kind_names, stage_kind
from scaling.models.registry import configured_rung, get_rung
from scaling.stages import stage_name
from scaling.tracking import store
from scaling.tracking.store import PARENT_TAG

LINEAGE_TAGS = ("rung", "stage", "kind", "proxy", "fingerprint", "teacher_run_id", "init_run_id")
SWEEP_TAGS = ("optuna_study", "optuna_trial_number", "optuna_state")
# Filter keyword -> the column it matches.
FILTERS = {
    "ladder": "tags.ladder",
    "rung": "rung",
    "stage": "label",  # e.g. clip@18B (runs logged before the tags were unified may tag the kind only)
    "kind": "kind",
    "study": "optuna_study",
    "status": "status",
    "parent_run_id": "parent_run_id",
}


class AnalysisError(ValueError):
    """Bad input to the analysis (unknown experiment, no runs, ...): one message, no traceback."""


def resolve_uri(uri: str | os.PathLike | None = None) -> str:
    """The argument, else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``; a ``.db`` path is SQLite."""
    return store.resolve_uri(uri)


def client(uri: str | os.PathLike | None = None):
    """An ``MlflowClient`` for an existing store (see :func:`resolve_uri`)."""
    try:
        return store.client(resolve_uri(uri), create=False)
    except FileNotFoundError as exc:
        raise AnalysisError(str(exc)) from None


def experiment_ids(mlc, experiment: str | None) -> dict[str, str]:
    """``{experiment_id: name}`` for one experiment name (or id), or all of them."""
    if experiment is None:
        return {e.experiment_id: e.name for e in mlc.search_experiments()}
    exp = mlc.get_experiment_by_name(experiment)
    if exp is None and experiment.isdigit():
        try:
            exp = mlc.get_experiment(experiment)
        except Exception:
            exp = None
    if exp is None:
        names = sorted(e.name for e in mlc.search_experiments())
        known = ", ".join(names) if names else "none"
        raise AnalysisError(f"no MLflow experiment named {experiment!r} (known: {known})")
    return {exp.experiment_id: exp.name}


def _row(run, exp_name: str) -> dict[str, Any]:
    info, data = run.info, run.data
    tags = dict(data.tags)
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "experiment": exp_name,
        "run_name": info.run_name or tags.get("mlflow.runName", ""),
        "status": info.status,
        "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True) if info.start_time else pd.NaT,
        "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else pd.NaT,
        "parent_run_id": tags.get(PARENT_TAG),
    }
    ends = row["end_time"] - row["start_time"] if info.end_time and info.start_time else None
    row["duration_s"] = ends.total_seconds() if ends is not None else float("nan")
    for key in (*LINEAGE_TAGS, *SWEEP_TAGS):
        row[key] = tags.get(key)
    # Runs logged without the lineage tags still carry their resolved config.
    params = data.params
    row["kind"] = row["kind"] or params.get("stage.kind")
    row["rung"] = row["rung"] or params.get("stage.rung")
    row["proxy"] = row["proxy"] or params.get("stage.proxy")
    row["label"] = stage_label(row["stage"], row["kind"], row["rung"], row["run_name"])
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
    row.update({f"tags.{k}": v for k, v in tags.items() if not k.startswith("mlflow.")})
    return row


def stage_label(stage: Any, kind: Any, rung: Any, run_name: Any) -> str:
    """A run's display name: ``clip@18B`` style when known (an older run's stage tag may hold the kind only)."""
    for text in (stage, run_name):
        if isinstance(text, str) and "@" in text:
            return text
    if isinstance(kind, str) and isinstance(rung, str) and kind and rung:
        return stage_name(kind, rung)
    return str(run_name or stage or "")


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes"}


@functools.lru_cache(maxsize=64)
def _rung(name: str, proxy: bool):
    return get_rung(name, proxy=proxy)


def _configured(row: pd.Series, name: str, proxy: bool):
    """The run's rung with its logged ``model.vision.*`` / ``model.text.*`` / ``data.image_size``
    params applied, as its stage built it."""
    parts: dict[str, dict[str, Any]] = {"vision": {}, "text": {}}
    for col, value in row.items():
        for part, tower in parts.items():
            prefix = f"params.model.{part}."
            # A stage run logs unset keys as "null" (scaling.ladder.describe): not an override.
            if (
                isinstance(col, str)
                and col.startswith(prefix)
                and isinstance(value, str)
                and value not in ("", "null")
            ):
                tower[col[len(prefix):]] = value
    image_size = _first(row, "params.data.image_size")
    if image_size in ("null", "None"):
        image_size = None
    if not parts["vision"] and not parts["text"] and image_size is None:
        return _rung(name, proxy)
    return configured_rung(name, proxy, parts["vision"], parts["text"], image_size)


def _first(row: pd.Series, *columns: str) -> Any:
    for col in columns:
        value = row.get(col)
        if value == "null":  # an unset key, as a stage run logs it (scaling.ladder.describe)
            continue
        if value is not None and not (isinstance(value, float) and pd.isna(value)):
            return value
    return None


def _costs(row: pd.Series) -> tuple[float, float, str]:
    """(parameters, training FLOPs, where the FLOPs come from) for one run."""
    # Logged values win: train/flops (the stage's own count), cost/* (the sweep's estimate).
    logged = _first(row, "metrics.train/flops", "metrics.cost/train_flops")
    rung_name = _first(row, "rung", "params.stage.rung")
    kind = _first(row, "kind", "params.stage.kind")
    n_params, flops, source = float("nan"), float("nan"), ""
    if logged is not None:
        flops, source = float(logged), "logged"
    if _first(row, "metrics.cost/params") is not None:
        n_params = float(row["metrics.cost/params"])
    if rung_name is None or kind not in kind_names():
        return n_params, flops, source
    try:
        proxy = _truthy(_first(row, "proxy", "params.stage.proxy") or "false")
        rung = _configured(row, str(rung_name), proxy)
        if math.isnan(n_params):
            n_params = float(stage_kind(kind).law_params(rung))
        if source:
            return n_params, flops, source
        samples = _first(row, "metrics.train/samples_seen", "params.train.samples")
        if samples is None:
            return n_params, flops, source
        teacher_name = _first(row, "params.stage.teacher_rung")
        teacher = _rung(str(teacher_name), proxy) if teacher_name else None
        flops = costs.train_flops(
            rung,
            kind,
            float(samples),
            patch_dropout=float(_first(row, "params.model.patch_dropout") or 0.0),
            mask_ratio=float(_first(row, "params.loss.mask_ratio") or 0.4),
            teacher=teacher,
        )
        return n_params, float(flops), "cost model"
    except Exception:  # cost model missing or the rung unknown: leave the cells empty
        return n_params, flops, source


def runs_frame(
    uri: str | None = None,
    experiment: str | None = None,
    *,
    finished_only: bool = False,
    with_costs: bool = True,
    **filters: Any,
) -> pd.DataFrame:
    """One row per run of ``experiment`` (all experiments when None).

    ``filters``: ``ladder``, ``rung``, ``stage``, ``kind``, ``study``, ``status``,
    ``parent_run_id`` (equality; a list/tuple matches any of its values).
    """
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise AnalysisError(f"unknown filter(s) {', '.join(unknown)}; use {', '.join(FILTERS)}")
    mlc = client(uri)
    exps = experiment_ids(mlc, experiment)
    runs = store.search_runs(mlc, list(exps), newest_first=False) if exps else []
    df = pd.DataFrame([_row(r, exps[r.info.experiment_id]) for r in runs])
    if df.empty:
        df = pd.DataFrame(columns=["run_id", "experiment", "run_name", "status", "parent_run_id", "label",
                                   "start_time", *LINEAGE_TAGS, *SWEEP_TAGS])  # fmt: skip
    parents = set(df["parent_run_id"].dropna())
    df["is_parent"] = df["run_id"].isin(parents) | (df["parent_run_id"].isna() & df["stage"].isna()
                                                   & df["optuna_trial_number"].isna())  # fmt: skip
    if "optuna_trial_number" in df:
        df["optuna_trial_number"] = pd.to_numeric(df["optuna_trial_number"], errors="coerce")
    for key, value in filters.items():
        col = FILTERS[key]
        if col not in df:
            df = df.iloc[0:0]
            continue
        values = value if isinstance(value, (list, tuple, set)) else [value]
        df = df[df[col].astype(str).isin([str(v) for v in values])]
    if finished_only:
        df = df[df["status"] == "FINISHED"]
    if with_costs and not df.empty:
        costs = df.apply(_costs, axis=1, result_type="expand")
        costs.columns = ["n_params", "flops", "flops_source"]
        df = pd.concat([df, costs], axis=1)
    elif with_costs:
        df = df.assign(n_params=pd.Series(dtype=float), flops=pd.Series(dtype=float),
                       flops_source=pd.Series(dtype=str))  # fmt: skip
    return df.reset_index(drop=True)


def metric_history(uri: str | None, run_id: str, key: str) -> pd.DataFrame:
    """``step``, ``timestamp``, ``value`` of one metric of one run (empty if never logged)."""
    hist = client(uri).get_metric_history(run_id, key)
    df = pd.DataFrame(
        {"step": [m.step for m in hist], "timestamp": [m.timestamp for m in hist],
         "value": [m.value for m in hist]}  # fmt: skip
    )
    df["run_id"], df["key"] = run_id, key
    # A resumed stage may re-send steps: keep the last value logged for each step.
    return df.sort_values(["step", "timestamp"]).drop_duplicates("step", keep="last").reset_index(drop=True)


def histories(uri: str | None, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Long frame (``run_id``, ``key``, ``step``, ``value``) of several metrics of several runs."""
    frames = [metric_history(uri, rid, key) for rid in run_ids for key in keys]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["step", "timestamp", "value", "run_id", "key"])
    return pd.concat(frames, ignore_index=True)


def latest_parent_run(uri: str | None, experiment: str) -> str | None:
    """The id of the most recent parent (invocation) run of ``experiment``, if any."""
    df = runs_frame(uri, experiment, with_costs=False)
    parents = df[df["is_parent"]]
    if parents.empty:
        return None
    return str(parents.sort_values("start_time").iloc[-1]["run_id"])
