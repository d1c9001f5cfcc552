"""The report's sweep sections: per study, its trials, best trial, importances and figures."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from scaling.analysis.markdown import md_table
from scaling.analysis.report_figures import FigureWriter
from scaling.analysis.sweep_frame import importances, sweeps


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "study"


def sweep_sections(w: FigureWriter, runs: pd.DataFrame) -> list[str]:
    # matplotlib loads with the first figure
    from scaling.analysis.plots import sweep as sweep_plot

    lines: list[str] = []
    for sw in sweeps(runs):
        slug = _slug(sw.study)
        counts = sw.trials["state"].value_counts().to_dict()
        lines += [f"## Sweep '{sw.study}'", "",
                  f"Objective: `{sw.objective}` ({sw.direction}); trials: "
                  + ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) + ".", ""]  # fmt: skip
        best = sw.best()
        if best is None:
            w.notes.append(f"sweep '{sw.study}': no complete trial with '{sw.objective}' yet")
        else:
            hp = ", ".join(f"{h}={best[h]:.4g}" if isinstance(best[h], (float, np.floating)) else f"{h}={best[h]}"
                           for h in sw.hp)  # fmt: skip
            lines += [f"Best: trial {int(best['trial'])}, {sw.objective} = {best['objective']:.4g} ({hp}).", ""]
        try:
            imp = importances(sw)
        except Exception as exc:  # importance needs enough varied trials; the rest still works
            imp = {}
            w.notes.append(f"sweep '{sw.study}': parameter importances unavailable ({exc})")
        figs = [
            ("history", lambda sw=sw: sweep_plot.history(sw)),
            ("importance", lambda sw=sw, imp=imp: sweep_plot.importance(sw, imp)),
            ("parallel", lambda sw=sw: sweep_plot.parallel_coordinates(sw)),
            ("ablation", lambda sw=sw: sweep_plot.ablation_table(sw)),
        ]
        for name, make in figs:
            img = w.figure(f"sweep_{slug}_{name}", make)
            if img:
                lines += [f"![{name}]({img})", ""]
        table = sw.trials.drop(columns=["run_id", "status"]).rename(columns={"objective": sw.objective})
        lines += ["### Trials", "", md_table(table), ""]
    return lines
