"""One experiment's report: PNG + SVG figures and ``report.md`` with tables, from MLflow alone.

Whatever cannot be drawn (no finished runs, too few points to fit, a metric never logged) becomes
a line under "Notes" in the report and the figures that can be drawn are still written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.analysis import load, published
from scaling.analysis.markdown import md_table
from scaling.analysis.predict import MetricSpec
from scaling.analysis.report_arms import arms_section
from scaling.analysis.report_figures import FigureWriter
from scaling.analysis.report_ladder import ladder_section
from scaling.analysis.report_sweeps import sweep_sections
from scaling.stages import LAW_METRIC

DEFAULT_METRIC = LAW_METRIC
SECTIONS = ("ladder", "sweep", "published")


@dataclass
class Report:
    """What :func:`build_report` produced."""

    path: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)


def build_report(
    uri: str | None,
    experiment: str,
    out_dir: str | Path,
    *,
    metric: str = DEFAULT_METRIC,
    log_artifacts: bool = False,
    record_predictions: bool | None = None,
    sections: tuple[str, ...] = SECTIONS,
    formats: tuple[str, ...] = ("png", "svg"),
    two_step: bool = False,
    compute: str = "own",
) -> Report:
    """Write the figures and ``report.md`` for ``experiment`` into ``out_dir``.

    ``sections``: any of ``ladder``, ``sweep``, ``published`` (the bubble chart and its table).
    ``two_step``: also fit OLMo's compute -> task loss -> accuracy law and its rollout.
    ``compute``: the law's compute axis, ``own`` or ``inherited`` (``predict.COMPUTE_AXES``).
    """
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise load.AnalysisError(f"unknown report section(s) {', '.join(unknown)}; use {', '.join(SECTIONS)}")
    runs = load.runs_frame(uri, experiment)  # first: a store that is not there leaves no folder
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = FigureWriter(out, tuple(formats))
    record = log_artifacts if record_predictions is None else record_predictions
    finished = runs[runs["status"] == "FINISHED"] if not runs.empty else runs
    children = runs[~runs["is_parent"]] if not runs.empty else runs
    if runs.empty:
        w.notes.append(f"experiment '{experiment}' has no runs yet")
    elif finished[~finished["is_parent"]].empty:
        w.notes.append(f"experiment '{experiment}' has no finished runs yet")

    # matplotlib loads with the first figure
    from scaling.analysis.plots import bubble

    # ladder stages only: a sweep's trials share one size and would pile up in the bubble chart
    clip_runs = (finished[(finished["kind"] == "clip") & finished["optuna_trial_number"].isna()]
                 if not finished.empty else finished)  # fmt: skip
    body: list[str] = []
    img = w.figure("bubble", lambda: bubble.bubble_chart(clip_runs, metric)) if "published" in sections else None
    ladder_lines, checks = [], pd.DataFrame()
    if "ladder" in sections and not runs.empty:
        ladder_lines, checks = ladder_section(w, uri, runs, metric, record, two_step, compute)
        # the gain is in accuracy points: a law fitted on a loss still compares arms by top-1
        arms_metric = metric if MetricSpec.for_key(metric).higher_is_better else DEFAULT_METRIC
        arm_lines, arm_notes = arms_section(runs, arms_metric, w.figure)
        ladder_lines += arm_lines
        w.notes += arm_notes
    sweep_lines = sweep_sections(w, runs) if "sweep" in sections and not runs.empty else []

    status = children["status"].value_counts().to_dict() if not children.empty else {}
    head = [f"# Scaling report: {experiment}", "",
            f"Runs: {len(children)} ({', '.join(f'{k.lower()} {v}' for k, v in sorted(status.items())) or 'none'}); "
            f"invocations (parent runs): {int(runs['is_parent'].sum()) if not runs.empty else 0}. "
            f"Metric: `{metric}`.", ""]  # fmt: skip
    body += ladder_lines + sweep_lines
    if "published" in sections:
        body += ["## Published EVA-CLIP results", ""]
        if img:
            body += [f"![published bubble chart]({img})", ""]
        pub = published.table("clip_models")[["model", "total_params_m", "samples_seen_b", "in1k_zero_shot",
                                              "img_cls_avg27", "table"]]  # fmt: skip
        pub.columns = ["model", "params (M)", "samples (B)", "IN-1K zero-shot", "27-set avg", "source table"]
        body += [md_table(pub, ".4g"), "Empty cells: not checked against a citable source "
                 "(see `python -m scaling.analysis published`).", ""]  # fmt: skip
    notes = ["## Notes", "", *[f"- {n}" for n in w.notes], ""] if w.notes else []
    path = out / "report.md"
    path.write_text("\n".join(head + notes + body))
    report = Report(path, w.figures, w.notes, checks)
    if log_artifacts:
        _log(uri, experiment, report)
    return report


def _log(uri, experiment: str, report: Report) -> None:
    parent = load.latest_parent_run(uri, experiment)
    if parent is None:
        report.notes.append("no parent run to attach the report to")
        return
    mlc = load.client(uri)
    for path in [report.path, *report.figures]:
        try:
            mlc.log_artifact(parent, str(path), "report")
        except Exception as exc:  # e.g. an artifact store this machine cannot write to
            report.notes.append(f"could not log {path.name} to run {parent}: {exc}")
            return


def write_report(uri: str | None, experiment: str, out_dir: str | Path, **options: Any) -> Path:
    """Write the report of ``experiment`` into ``out_dir`` and return the path of ``report.md``.

    ``options`` are :func:`build_report`'s: ``log_artifacts=True`` also attaches report and figures
    to the experiment's latest parent run and records each run's predicted metric
    (``pred/<metric>``) unless ``record_predictions=False``; ``metric``, ``sections``, ``formats``.
    """
    return build_report(uri, experiment, out_dir, **options).path
