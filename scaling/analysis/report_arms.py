"""The report's weak-to-strong section: a study's arms side by side (``scaling.analysis.arms``)."""

from __future__ import annotations

import pandas as pd

from scaling.analysis.arms import verdict, weak_to_strong
from scaling.analysis.markdown import md_table

# held-out losses a study's arms are also compared on (``scaling.eval.zeroshot``)
ARM_LOSSES = ("eval/synth_cls/loss", "eval/synth_ret/loss")


def arms_section(runs: pd.DataFrame, metric: str) -> tuple[list[str], list[str]]:
    """(Markdown lines, notes) of a study's arms: the gain per stage in ``metric`` with its interval,
    then the same runs compared on the held-out losses."""
    table = weak_to_strong(runs, metric)
    if table.empty:
        return [], []
    lines = ["## Weak-to-strong: MIM initialisation against its controls", "",
             "Every CLIP stage trained three ways at equal CLIP samples: `mim_init` (vision tower from the "
             "rung's MIM stage, as the ladder does), `random_init` (random vision tower, text tower as in the "
             "ladder) and `scratch` (both towers random). Gain = mean(mim_init) − mean(random_init) of the "
             f"final `{metric}`; 90 % interval: bootstrap over each arm's seeds (4000 resamples), for this "
             "one MIM checkpoint per stage.", ""]  # fmt: skip
    out = pd.DataFrame({"stage": table["stage"]})
    for arm in ("mim_init", "random_init", "scratch"):
        out[f"{arm} (n)"] = [f"{m:.4g} ± {s:.2g} ({int(n)})" if n else "–" for m, s, n in
                             zip(table[f"mean_{arm}"], table[f"sd_{arm}"].fillna(0.0), table[f"n_{arm}"],
                                 strict=True)]  # fmt: skip
    for key, name in (("mim_init-random_init", "gain vs random_init"), ("mim_init-scratch", "gain vs scratch")):
        out[name] = table[key]
        out[f"{name} 90 %"] = [f"[{lo:.4g}, {hi:.4g}]" if not pd.isna(lo) else "–"
                               for lo, hi in zip(table[f"{key}_low"], table[f"{key}_high"], strict=True)]  # fmt: skip
    out["verdict"] = [verdict(r) for _, r in table.iterrows()]
    lines += [md_table(out), "Cells: mean ± standard deviation over seeds (number of seeds).", ""]
    lines += _arm_losses(runs)
    notes = []
    if (table["n_scratch"] == 0).any():
        notes.append("weak-to-strong: stages without scratch runs train their text tower from scratch in "
                     "the ladder too, so random_init is the scratch arm there")
    return lines, notes


def _arm_losses(runs: pd.DataFrame) -> list[str]:
    """The same comparison on the held-out losses, which keep separating the arms after top-1 has
    reached the colour plateau (lower is better, so the gain is random_init − mim_init)."""
    rows = []
    for key in ARM_LOSSES:
        table = weak_to_strong(runs, key)
        for _, r in table.iterrows():
            gain, lo, hi = -r["mim_init-random_init"], -r["mim_init-random_init_high"], -r["mim_init-random_init_low"]
            flipped = pd.Series({"g_low": lo, "g_high": hi})
            rows.append({"stage": r["stage"], "metric": f"`{key}`", "mim_init": f"{r['mean_mim_init']:.4g}",
                         "random_init": f"{r['mean_random_init']:.4g}", "gain (lower loss)": f"{gain:.4g}",
                         "90 %": f"[{lo:.4g}, {hi:.4g}]" if not pd.isna(lo) else "–",
                         "verdict": verdict(flipped, "g")})  # fmt: skip
    if not rows:
        return []
    return ["Held-out losses, same runs (lower is better; gain = mean(random_init) − mean(mim_init)):", "",
            md_table(pd.DataFrame(rows)), ""]
