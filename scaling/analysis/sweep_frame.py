"""A sweep's trials as a tidy table: one row per trial, its hyper-parameters and objective.

Trials are child runs tagged ``optuna_trial_number``; their sampled values are the ``hp/<name>``
params and the study's parent run says what was optimised (tag ``objectives``, e.g.
``eval/synth_cls/top1 (maximize)``) and over which space (params ``search_space.<name>``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution

HP_PREFIX = "params.hp/"
DEFAULT_OBJECTIVE = ("eval/synth_cls/top1", "maximize")
_SPACE = re.compile(r"^(?P<type>\w+)\[(?P<low>[^,]+),\s*(?P<high>[^\]]+)\](?P<log> log)?$")


@dataclass
class Sweep:
    """Trials of one study (``trials``: trial, state, status, run_id, objective, hp columns)."""

    study: str
    objective: str
    direction: str
    trials: pd.DataFrame
    hp: list[str]
    space: dict[str, dict] = field(default_factory=dict)

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def complete(self) -> pd.DataFrame:
        return self.trials[(self.trials["state"] == "COMPLETE") & self.trials["objective"].notna()]

    def best(self) -> pd.Series | None:
        done = self.complete
        if done.empty:
            return None
        return done.loc[done["objective"].idxmax() if self.maximize else done["objective"].idxmin()]


def _objective(parent: pd.Series | None, trials: pd.DataFrame) -> tuple[str, str]:
    text = parent.get("tags.objectives") if parent is not None else None
    if isinstance(text, str) and text.strip():
        first = text.split(",")[0].strip()
        m = re.match(r"^(.*?)\s*\((minimize|maximize)\)$", first)
        if m:
            return m.group(1), m.group(2)
        return first, "minimize" if "loss" in first else "maximize"
    if f"metrics.{DEFAULT_OBJECTIVE[0]}" in trials:
        return DEFAULT_OBJECTIVE
    metric_cols = [c[len("metrics."):] for c in trials.columns if c.startswith("metrics.")]
    key = next((k for k in metric_cols if "top1" in k), metric_cols[0] if metric_cols else DEFAULT_OBJECTIVE[0])
    return key, "minimize" if "loss" in key else "maximize"


def _space(parent: pd.Series | None, hp: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in hp:
        text = parent.get(f"params.search_space.{name}") if parent is not None else None
        if not isinstance(text, str):
            continue
        m = _SPACE.match(text.strip())
        if m:
            out[name] = {"type": m["type"], "low": float(m["low"]), "high": float(m["high"]), "log": bool(m["log"])}
            continue
        try:
            choices = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(choices, list):
            out[name] = {"type": "categorical", "choices": [str(c) for c in choices]}
    return out


def _numeric(series: pd.Series) -> pd.Series | None:
    values = pd.to_numeric(series, errors="coerce")
    return values if values.notna().sum() == series.notna().sum() else None


def sweeps(runs: pd.DataFrame) -> list[Sweep]:
    """Every study found in ``runs`` (a :func:`scaling.analysis.load.runs_frame`)."""
    if "optuna_study" not in runs or runs["optuna_study"].isna().all():
        return []
    out = []
    for study, group in runs[runs["optuna_study"].notna()].groupby("optuna_study", sort=True):
        trials = group[group["optuna_trial_number"].notna()]
        parents = group[group["optuna_trial_number"].isna()]
        parent = parents.sort_values("start_time").iloc[-1] if not parents.empty else None
        key, direction = _objective(parent, trials)
        hp = sorted(c[len(HP_PREFIX):] for c in trials.columns if c.startswith(HP_PREFIX) and trials[c].notna().any())
        col = f"metrics.{key}"
        table = pd.DataFrame({
            "trial": trials["optuna_trial_number"].astype(int),
            "state": trials["optuna_state"].fillna("UNKNOWN"),
            "status": trials["status"],
            "run_id": trials["run_id"],
            "objective": pd.to_numeric(trials[col], errors="coerce") if col in trials else np.nan,
        })  # fmt: skip
        for name in hp:
            values = trials[HP_PREFIX + name]
            numeric = _numeric(values)
            table[name] = numeric if numeric is not None else values.astype(str)
        table = table.sort_values("trial").reset_index(drop=True)
        out.append(Sweep(str(study), key, direction, table, hp, _space(parent, hp)))
    return out


def importances(sweep: Sweep) -> dict[str, float]:
    """fANOVA parameter importances (Optuna's evaluator) over the complete trials; {} if too few."""
    done = sweep.complete
    if len(done) < 3 or not sweep.hp:
        return {}
    dists = {}
    for name in sweep.hp:
        values = done[name]
        spec = sweep.space.get(name, {})
        if pd.api.types.is_numeric_dtype(values) and spec.get("type") != "categorical":
            low, high = float(values.min()), float(values.max())
            if "low" in spec:
                low, high = min(low, spec["low"]), max(high, spec["high"])
            if low == high:
                continue
            dists[name] = FloatDistribution(low, high, log=bool(spec.get("log")) and low > 0)
        else:
            choices = spec.get("choices") or sorted(values.astype(str).unique())
            if len(set(choices)) > 1:
                dists[name] = CategoricalDistribution(choices)
    if not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=sweep.direction)
    for _, row in done.iterrows():
        params = {n: (str(row[n]) if isinstance(d, CategoricalDistribution) else float(row[n]))
                  for n, d in dists.items()}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row["objective"])))
    return dict(optuna.importance.get_param_importances(study, params=list(dists)))
