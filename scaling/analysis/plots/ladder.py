"""Per-ladder figures: stage lineage (teacher -> MIM -> CLIP) with results, training curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from scaling.analysis.plots.style import COLORS, CYCLE, figure, human, note
from scaling.kinds import default_kinds, kind_names, stage_kind

STATUS_MARK = {"FINISHED": "✓", "FAILED": "✗", "KILLED": "✗", "RUNNING": "…", "SCHEDULED": "…"}
BOX_W, BOX_H = 0.78, 0.62
COL_STEP = 1.25  # data units between columns
ARC_RAD = 0.25


def _depths(stages: pd.DataFrame) -> dict[str, int]:
    ids = set(stages["run_id"])
    parents = {
        r["run_id"]: [p for p in (r.get("teacher_run_id"), r.get("init_run_id")) if isinstance(p, str) and p]
        for _, r in stages.iterrows()
    }
    depth: dict[str, int] = {}

    def visit(rid: str, seen: tuple[str, ...] = ()) -> int:
        if rid in depth:
            return depth[rid]
        if rid not in ids or rid in seen:
            return -1  # an upstream run outside this experiment: drawn in its own first column
        ups = parents.get(rid, [])
        d = 1 + max((visit(u, (*seen, rid)) for u in ups), default=-1)
        depth[rid] = d
        return d

    for rid in ids:
        visit(rid)
    return depth


def _box_text(row: pd.Series) -> str:
    kind = row.get("kind") or ""
    lines = [str(row.get("label") or row.get("run_name") or row["run_id"][:8])]
    size = row.get("n_params")
    lines.append(f"{kind.upper() or 'run'}" + (f" · {human(size)} params" if pd.notna(size) else ""))
    key = stage_kind(kind).result_metric if kind in kind_names() else None
    value = row.get(f"metrics.{key}") if key else None
    if value is not None and pd.notna(value):
        lines.append(f"{key.split('/')[-2]}/{key.split('/')[-1]} = {value:.3g}")
    else:
        lines.append("no result yet")
    lines.append(f"{STATUS_MARK.get(row.get('status'), '?')} {str(row.get('status', '')).lower()}")
    return "\n".join(lines)


def _upstream_rung(stages: pd.DataFrame, rid: str) -> str | None:
    users = stages[stages["teacher_run_id"] == rid]
    if users.empty or "params.stage.teacher_rung" not in users:
        return None
    value = users["params.stage.teacher_rung"].dropna()
    return str(value.iloc[0]) if not value.empty else None


def lineage(stages: pd.DataFrame, title: str = "Ladder lineage") -> Figure:
    """Boxes per stage run, arrows teacher (dashed) and init (solid); columns = dependency depth."""
    if stages.empty:
        fig, ax = figure(figsize=(6, 2.5))
        note(ax, "no stage runs (tag 'stage') in this experiment")
        return fig
    depth = _depths(stages)
    ids = set(stages["run_id"])
    external = sorted({p for c in ("teacher_run_id", "init_run_id") for p in stages[c].dropna()
                       if isinstance(p, str) and p and p not in ids})  # fmt: skip
    nodes: dict[str, tuple[float, float, str, str]] = {}
    columns: dict[int, list[str]] = {}
    for rid in external:
        columns.setdefault(0, []).append(rid)
    for _, r in stages.sort_values("start_time").iterrows():
        d = depth[r["run_id"]] + (1 if external else 0)
        columns.setdefault(d, []).append(r["run_id"])
    n_cols, n_rows = max(columns) + 1, max(len(v) for v in columns.values())
    fig, ax = figure(figsize=(2.7 * n_cols + 0.6, 1.45 * n_rows + 1.1))
    by_id = stages.set_index("run_id")
    for col, rids in columns.items():
        for i, rid in enumerate(rids):
            y = (n_rows - 1) / 2 - i + (len(rids) - 1) / 2 - (n_rows - 1) / 2
            if rid in by_id.index:
                row = by_id.loc[rid]
                row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
                row = pd.concat([row, pd.Series({"run_id": rid})])
                kind = row.get("kind") or ""
                text, color = _box_text(row), COLORS.get(kind, "0.6")
            else:
                rung = _upstream_rung(stages, rid)
                what = f"teacher CLIP {rung}" if rung else "upstream run"
                text, color = f"{what}\nrun {rid[:8]}\n(outside this experiment)", COLORS["teacher"]
            nodes[rid] = (col * COL_STEP, y, text, color)
    for x, y, text, color in nodes.values():
        ax.add_patch(FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H,
                                    boxstyle="round,pad=0.02,rounding_size=0.06", fc=color, alpha=0.14,
                                    ec=color, lw=1.6))  # fmt: skip
        ax.text(x, y, text, ha="center", va="center", fontsize=8, linespacing=1.35)
    edges: list[tuple] = []
    for _, r in stages.iterrows():
        # a CLIP stage's teacher_run_id is where its text tower comes from
        kind = r.get("kind")
        teacher = stage_kind(kind).teacher_label if kind in kind_names() else "teacher"
        for col, style, label in (("teacher_run_id", "--", teacher), ("init_run_id", "-", "init")):
            up = r.get(col)
            if not isinstance(up, str) or up not in nodes or r["run_id"] not in nodes:
                continue
            edges.append(((*nodes[up][:2],), (*nodes[r["run_id"]][:2],), style, label))
    xs = [n[0] for n in nodes.values()]
    ys = [n[1] for n in nodes.values()]
    skips = any(abs(b[0] - a[0]) > COL_STEP * 1.5 for a, b, *_ in edges)
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.55, max(ys) + (1.0 if skips else 0.55))
    arcs: list[tuple] = []
    for (x0, y0), (x1, y1), style, label in edges:
        props = dict(arrowstyle="-|>", ls=style, lw=1.4, color="0.25", shrinkA=2, shrinkB=2)
        if abs(x1 - x0) > COL_STEP * 1.5:
            # an edge that skips a column arcs over the boxes in between
            top = max(y0, y1) + BOX_H / 2
            arc = ax.annotate("", xy=(x1, top), xytext=(x0, top),
                              arrowprops=props | dict(connectionstyle=f"arc3,rad={-ARC_RAD}"))  # fmt: skip
            arcs.append((arc, (x0 + x1) / 2, top, label))
        else:
            ax.annotate("", xy=(x1 - BOX_W / 2, y1), xytext=(x0 + BOX_W / 2, y0), arrowprops=props)
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.06, label, ha="center", va="bottom", fontsize=7.5,
                    color="0.3", style="italic")  # fmt: skip
    if arcs:
        fig.canvas.draw()  # the arcs' shape is fixed in display space once the layout is done
        for arc, xm, top, label in arcs:
            # quadratic Bezier: the apex lies halfway between the chord and the control point
            ctrl_px = float(arc.arrow_patch.get_path().vertices[:, 1].max())  # display coordinates
            top_px = ax.transData.transform([(xm, top)])[0, 1]
            apex = ax.transData.inverted().transform([(0, (top_px + ctrl_px) / 2)])[0, 1]
            ax.annotate(label, (xm, apex), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7.5, color="0.3", style="italic")  # fmt: skip
    ax.set_aspect("auto")
    ax.axis("off")
    ax.set_title(f"{title}  (dashed: teacher CLIP, solid: initialisation)", loc="left")
    return fig


def training_curves(stages: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """2 x 2: training loss and evaluation metric, MIM stages left, CLIP stages right.

    ``curves``: long frame (``run_id``, ``key``, ``step``, ``value``) with ``train/loss``, the eval
    metrics and ``train/samples_seen`` (used as the x axis when present).
    """
    fig, axes = figure(2, 2, figsize=(11, 7))
    kinds = default_kinds()
    panels = {(0, k): "train/loss" for k in kinds} | {(1, k): stage_kind(k).result_metric for k in kinds}
    for (r, kind), key in panels.items():
        ax = axes[r][kinds.index(kind)]
        ax.set_title(f"{kind.upper()} stages: {key}", loc="left")
        runs = stages[stages["kind"] == kind]
        drawn = 0
        for i, (_, run) in enumerate(runs.iterrows()):
            c = curves[(curves["run_id"] == run["run_id"])]
            y = c[c["key"] == key]
            if y.empty:
                continue
            seen = c[c["key"] == "train/samples_seen"]
            x = y["step"].to_numpy(float)
            if not seen.empty:
                x = np.interp(x, seen["step"], seen["value"])
            style = "-" if r == 0 else "o-"
            ax.plot(x, y["value"], style, ms=4, lw=1.5, color=CYCLE[i % len(CYCLE)],
                    label=str(run.get("label") or run["run_name"]))  # fmt: skip
            drawn += 1
        if drawn == 0:
            note(ax, f"no {kind} stage logged '{key}'")
            continue
        ax.legend(loc="best")
        ax.set_ylabel(key)
        if r == 1:
            ax.set_xlabel("samples seen")
        ax.xaxis.set_major_formatter(lambda v, _: human(v))
    fig.suptitle("Training curves per stage", fontweight="bold")
    return fig
