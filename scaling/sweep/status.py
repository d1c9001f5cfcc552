"""What a study holds: trials by state, the best trial(s) or Pareto front, the result table."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from scaling.sweep.accounting import trial_summary
from scaling.sweep.spec import SweepSpec

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def summarize(study: optuna.Study, spec: SweepSpec) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state.name == s for t in trials) for s in STATES}
    best: list[dict[str, Any]] = []
    if counts["COMPLETE"]:
        chosen = [study.best_trial] if len(spec.objectives) == 1 else study.best_trials
        best = [trial_summary(t) for t in sorted(chosen, key=lambda t: t.number)]
    return {"study": spec.name, "target": spec.n_trials, "counts": counts, "best": best,
            "trials": [trial_summary(t) for t in trials]}


def result_columns(spec: SweepSpec) -> list[str]:
    """Objective keys first, then the sweep's extra ``report`` metrics (``stage:metric``)."""
    keys = [o.key for o in spec.objectives]
    for item in spec.report:
        stage, _, metric = item.rpartition(":")
        key = f"{stage}/{metric}" if stage and spec.base.prefixed else metric
        if key not in keys:
            keys.append(key)
    return keys


def result_rows(summary: dict[str, Any], spec: SweepSpec, states: Sequence[str] = STATES) -> list[dict[str, Any]]:
    columns = result_columns(spec)
    param_names = [p.name for p in spec.params if p.type != "fixed"]
    rows = []
    for t in summary["trials"]:
        if t["state"] not in states:
            continue
        row: dict[str, Any] = {"trial": t["number"], "state": t["state"]}
        row.update({name: t["params"].get(name) for name in param_names})
        row.update({key: t["metrics"].get(key) for key in columns})
        row["retry_of"] = t["retry_of"]
        row["mlflow_run_id"] = t["mlflow_run_id"]
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], skip: Sequence[str] = ("mlflow_run_id",)) -> str:
    if not rows:
        return "(no trials)"
    columns = [c for c in rows[0] if c not in skip]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def format_status(summary: dict[str, Any], spec: SweepSpec) -> str:
    counts = summary["counts"]
    done = counts["COMPLETE"] + counts["PRUNED"]
    lines = [f"study {spec.name}: {done}/{spec.n_trials} finished  "
             + "  ".join(f"{s}={counts[s]}" for s in STATES),
             f"storage: {spec.storage_label()}"]
    best = summary["best"]
    if best:
        title = "best trial" if len(spec.objectives) == 1 else f"Pareto front ({len(best)} trials)"
        lines.append(f"{title}:")
        for b in best:
            values = ", ".join(f"{o.key}={v:.4g}" for o, v in zip(spec.objectives, b["values"], strict=True))
            lines.append(f"  #{b['number']}: {values}  params={json.dumps(b['params'])}")
    else:
        lines.append("no completed trial yet")
    return "\n".join(lines)


def write_tables(summary: dict[str, Any], spec: SweepSpec, folder: Path) -> list[Path]:
    """``results.csv`` (every trial), ``results.md`` (finished ones) and ``best.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = result_rows(summary, spec)
    csv_path = folder / "results.csv"
    if rows:
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        csv_path.write_text("")
    md_path = folder / "results.md"
    finished = result_rows(summary, spec, ("COMPLETE", "PRUNED"))
    md_path.write_text(f"# Sweep {spec.name}\n\n```\n{format_table(finished)}\n```\n")
    best_path = folder / "best.json"
    best_path.write_text(json.dumps(summary["best"], indent=2, default=str))
    return [csv_path, md_path, best_path]


def finished_states() -> tuple[TrialState, ...]:
    return (TrialState.COMPLETE, TrialState.PRUNED)
