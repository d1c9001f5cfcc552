"""The report's held-out-stage rollout: the law's predictions against what each stage achieved,
and against the naive predictions a reviewer would make without a law."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.analysis.markdown import human, md_table


def rollout_lines(checks: pd.DataFrame, title: str, what: str) -> list[str]:
    done = checks.dropna(subset=["predicted"])
    if done.empty:
        return [f"### {title}", "", "No stage has 3 smaller stages to fit a law on: nothing held out yet.", ""]
    table = checks[["label", "flops", "predicted", "low", "high", "achieved", "rel_error"]].copy()
    if "n_runs" in checks:
        table["achieved"] = [f"{v:.4g} ± {sd:.2g} ({int(n)})" if n > 1 else f"{v:.4g} (1)"
                             for v, sd, n in zip(checks["achieved"], checks["sd"], checks["n_runs"],
                                                 strict=True)]  # fmt: skip
    table["flops"] = [human(v) for v in table["flops"]]
    table["rel_error"] = [f"{100 * v:+.1f} %" if not pd.isna(v) else "–" for v in table["rel_error"]]
    table.columns = ["stage", "FLOPs", "predicted", "band low", "band high", "achieved", "relative error"]
    mean_abs = float(np.mean(np.abs(done["rel_error"])))
    lines = [f"### {title}", "", f"Each stage's metric {what}, fitted on the stages with less compute only "
             f"(fewer than 3 below: no prediction). Mean |relative error| over {len(done)} held-out "
             f"stage(s): {100 * mean_abs:.1f} %."]  # fmt: skip
    if "same_as_below" in checks:
        lines += _naive_lines(checks, done, table)
    return lines + ["", md_table(table)]


def _naive_lines(checks: pd.DataFrame, done: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The law against the naive predictions a reviewer would make without it, on the same held-out
    stages, and the stages that are not monotone in compute (mutates ``table``)."""
    if "n_runs" in checks and (checks["n_runs"] > 1).any():
        counts = sorted({int(n) for n in checks["n_runs"]})
        lines = [f"Achieved: mean ± sd over {'/'.join(map(str, counts))} seed(s) (number of seeds)."]
    else:
        lines = ["Achieved: one seed per stage; run `python -m scaling.study --ladder ... --arms mim_init --seeds 3` "
                 "for the spread over seeds."]
    law_err = float(np.mean(np.abs(done["rel_error"])))
    for key, name in (("same_as_below", "same as the stage below"), ("last_two", "extrapolate the last two points")):
        rel = (checks[key] - checks["achieved"]) / checks["achieved"]
        table[name] = [f"{p:.4g} ({100 * r:+.1f} %)" if not pd.isna(p) else "–" for p, r in
                       zip(checks[key], rel, strict=True)]  # fmt: skip
        naive = float(np.mean(np.abs(rel[done.index])))
        beats = "beats" if law_err < naive else "does NOT beat"
        lines.append(f"The law {beats} \"{name}\" on these held-out stages: mean |relative error| "
                     f"{100 * law_err:.1f} % against {100 * naive:.1f} %.")
    bad = [f"{checks['label'][i]} (worse than {checks['label'][i - 1]} with less compute)"
           for i in range(1, len(checks)) if not checks["monotone"].iloc[i]]
    if bad:
        lines.append("**Not monotone in compute**: " + "; ".join(bad) + ". The law is fitted through the compute "
                     "frontier, which leaves such stages out: read it as the frontier's law, not every stage's.")
    return ["", *lines]
