"""The report's ladder sections: the stages table, lineage and curves, the compute scaling law with
its next-rung prediction and held-out rollout, and (optionally) OLMo's two-step law."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.analysis import load
from scaling.analysis.markdown import human as _human
from scaling.analysis.markdown import md_table
from scaling.analysis.power_law import FitError
from scaling.analysis.predict import (
    COMPUTE_AXES,
    MetricSpec,
    base_stage,
    compute_points,
    fit_frontier,
    law_points,
    next_rung,
    predicted_vs_achieved,
    record_prediction,
)
from scaling.analysis.predict_two_step import fit_two_step_points, two_step_rollout, with_loss
from scaling.analysis.report_figures import FigureWriter
from scaling.analysis.report_rollout import rollout_lines as _rollout_lines

CURVE_KEYS = ["train/loss", "train/samples_seen", "eval/synth_cls/top1", "eval/mim/loss"]


def running_seconds(stages: pd.DataFrame) -> tuple[pd.Series, bool]:
    """Each stage's own running time: from the ``stage_started_at`` tag its job sets (the MLflow run
    opens when the ladder plans, and would count the wait for upstream stages) to the run's end.
    Returns the times and whether any stage lacked the tag (then: the MLflow run's duration)."""
    started = pd.to_numeric(stages.get("tags.stage_started_at", pd.Series(np.nan, index=stages.index)),
                            errors="coerce")  # fmt: skip
    ended = (pd.to_datetime(stages["end_time"], utc=True) if "end_time" in stages
             else pd.Series(pd.NaT, index=stages.index))
    end_s = ended.map(lambda t: t.timestamp() if not pd.isna(t) else np.nan).astype(float)
    own = end_s - started
    fallback = own.isna() & stages["duration_s"].notna()
    return own.where(~fallback, stages["duration_s"]), bool(fallback.any())


def _runs_section(stages: pd.DataFrame, metric: str, notes: list[str]) -> str:
    df = stages[["label", "rung", "kind", "status"]].rename(columns={"label": "stage"})
    if "tags.arm" in stages and stages["tags.arm"].notna().any():
        df["arm"] = stages["tags.arm"].fillna("")
        df["seed"] = stages.get("tags.seed", pd.Series("", index=stages.index)).fillna("")
    df["params"] = [_human(v) for v in stages["n_params"]]
    df["train FLOPs"] = [_human(v) for v in stages["flops"]]
    df["FLOPs from"] = stages["flops_source"].fillna("")
    for key in (metric, "eval/mim/loss", "train/loss"):
        col = f"metrics.{key}"
        df[key] = stages.get(col, np.nan)
    seconds, fallback = running_seconds(stages)
    df["minutes"] = seconds / 60.0
    if fallback:
        notes.append("some stages carry no 'stage_started_at' tag (logged before it existed): their minutes "
                     "are the MLflow run's duration, which includes the wait for upstream stages")
    return md_table(df)


def _main_stages(stages: pd.DataFrame) -> pd.DataFrame:
    """The ladder's own stages: a study's seeds and control arms share their stage's box and curve."""
    if stages.empty:
        return stages
    return stages[[lab == base_stage(r) for lab, (_, r) in zip(stages["label"], stages.iterrows(), strict=True)]]


def ladder_section(w: FigureWriter, uri, runs: pd.DataFrame, metric: str, record: bool,
                   two_step: bool = False, compute: str = "own") -> tuple[list[str], pd.DataFrame]:
    # matplotlib loads with the first figure
    from scaling.analysis.plots import compute as compute_plot
    from scaling.analysis.plots import ladder as ladder_plot

    lines: list[str] = []
    stages = runs[runs["stage"].notna() & runs["optuna_trial_number"].isna()]
    if stages.empty:
        return lines, pd.DataFrame()
    lines += ["## Ladder stages", "", _runs_section(stages, metric, w.notes), ""]
    main = _main_stages(stages)
    img = w.figure("ladder_lineage", lambda: ladder_plot.lineage(main))
    if img:
        lines += [f"![stage lineage]({img})", ""]
    curves = load.histories(uri, list(main["run_id"]), CURVE_KEYS)
    img = w.figure("training_curves", lambda: ladder_plot.training_curves(main, curves))
    if img:
        lines += [f"![training curves]({img})", ""]

    finished = stages[(stages["status"] == "FINISHED") & (stages["kind"] == "clip")]
    if finished.empty:
        w.notes.append("no finished CLIP stage yet: no compute scaling fit")
        return lines, pd.DataFrame()
    points = compute_points(uri, finished, metric, compute)
    if compute == "inherited" and points.empty and not compute_points(uri, finished, metric).empty:
        w.notes.append("compute axis 'inherited': no stage carries the inherited_flops tag (written by "
                       "python -m scaling.study); rerun with the stage's own compute")
    spec = MetricSpec.for_key(metric, points["value"] if not points.empty else None)
    fit = front = None
    message = ""
    if points.empty:
        w.notes.append(f"the finished CLIP stages have no '{metric}' and compute: nothing to fit")
    else:
        try:
            fit, front = fit_frontier(points, spec)
        except FitError as exc:
            n = len(law_points(points))
            message = f"no law: {n} stage(s) at distinct compute, a law needs 3"
            w.notes.append(f"compute scaling: no law drawn: {exc} (finished CLIP stages: {n}; run more rungs, "
                           "e.g. the study ladder experiments/ladders/study.yaml)")  # fmt: skip
    nxt = next_rung(stages) if fit is not None else None
    checks = predicted_vs_achieved(points, finished, spec) if not points.empty else pd.DataFrame()
    img = w.figure("compute_scaling", lambda: compute_plot.compute_scaling(points, spec, fit, front, nxt,
                                                                           checks, message))  # fmt: skip
    lines += ["## Scaling with compute", "", f"Compute axis: {COMPUTE_AXES[compute]}.", ""]
    if img:
        lines += [f"![metric vs compute]({img})", ""]
    if fit is not None:
        ci = fit.intervals()
        how = fit.interval.replace("runs", "stages")
        lines += [f"Fit on the binned compute frontier of {fit.n} stages (final evaluations; seeds averaged), "
                  "Huber loss on log residuals: "
                  f"`{fit.formula('err' if spec.higher_is_better else 'y', 'C', 'FLOPs')}`; "
                  f"90 % intervals ({how}, {len(fit.boot)} draws): exponent [{ci['b'][0]:.3g}, {ci['b'][1]:.3g}], "
                  f"prefactor at C = {fit.x_ref:.0e} FLOPs [{ci['a_ref'][0]:.3g}, {ci['a_ref'][1]:.3g}]; "
                  f"R² (log) = {fit.r2:.3f}.", ""]  # fmt: skip
        if nxt is not None:
            y = float(fit.predict(nxt[1]))
            lo, hi = (float(spec.from_fit(v[0])) for v in fit.band(nxt[1]))
            lines += [f"**Next rung {nxt[0]}** (planned {_human(nxt[1])} FLOPs): predicted `{metric}` = "
                      f"{float(spec.from_fit(y)):.4g} (90 % band {min(lo, hi):.4g} – {max(lo, hi):.4g}).",
                      ""]  # fmt: skip
    if not checks.empty:
        lines += _rollout_lines(checks, "Held-out stages: predicted vs achieved", "as predicted by the law")
        if record:
            for _, row in checks.dropna(subset=["predicted"]).iterrows():
                try:
                    record_prediction(uri, row["run_id"], metric, row["predicted"], row["formula"])
                except Exception as exc:  # the report is still useful without the write-back
                    w.notes.append(f"could not record the prediction on run {row['run_id']}: {exc}")
    if two_step and not points.empty:
        lines += _two_step_lines(w, uri, points, spec, nxt)
    return lines, checks


def _two_step_lines(w: FigureWriter, uri, points: pd.DataFrame, spec: MetricSpec, nxt) -> list[str]:
    # OLMo's step 1 is the task loss (the held-out cross-entropy of the right answer) at each
    # evaluation; runs that never logged one fall back to the training loss
    loss_key = f"{spec.key.rsplit('/', 1)[0]}/loss"
    pts = with_loss(uri, points, loss_key, window=1)
    if pts["loss"].isna().all():
        loss_key, pts = "train/loss", with_loss(uri, points)
    lines = [f"## Two-step law: compute -> `{loss_key}` -> accuracy", ""]
    try:
        two = fit_two_step_points(pts, spec)
    except FitError as exc:
        w.notes.append(f"two-step law: {exc}")
        return lines + [f"No two-step law: {exc}.", ""]
    a, l0, k, b = two.link
    lines += [f"Step 1: `loss = {two.loss_fit.formula('loss', 'C', 'FLOPs').split(' = ', 1)[1]}`; step 2 (OLMo's "
              f"sigmoid link, on every evaluation): `acc = {a:.3g} / (1 + exp({-k:+.3g} · (loss - {l0:.3g}))) + "
              f"{b:.3g}`; {len(two.boot)} bootstrap resamples over stages.", ""]  # fmt: skip
    scale = 100.0 if spec.percent else 1.0
    if nxt is not None:
        lo, hi = two.band(nxt[1])
        lines += [f"Next rung {nxt[0]}: predicted `{spec.key}` = {float(np.ravel(two.predict(nxt[1]))[0]) * scale:.4g} "
                  f"(90 % band {lo[0] * scale:.4g} – {hi[0] * scale:.4g}).", ""]  # fmt: skip
    lines += _rollout_lines(two_step_rollout(pts, spec), "Held-out stages (two-step)",
                            "as predicted by the two-step law")
    return lines
