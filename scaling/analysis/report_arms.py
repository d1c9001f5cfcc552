"""The report's weak-to-strong section: a study's arms side by side (``scaling.analysis.arms``)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from scaling.analysis.arms import ARMS, COMPARISONS, gains, signed_gain, verdict, weak_to_strong
from scaling.analysis.markdown import md_table

# held-out losses a study's arms are also compared on (``scaling.eval.zeroshot``)
ARM_LOSSES = ("eval/synth_cls/loss", "eval/synth_ret/loss")
INTERVAL_RULE = ("90 % t intervals: paired t on the per-seed differences where both arms ran the same seeds "
                 "(same seed: same data order and upstream chain), Welch's t otherwise; the method and the "
                 "seeds are named in each row. `upstream` shared: every seed from the ladder's one teacher and "
                 "MIM checkpoint (the interval holds the CLIP stage's seed-to-seed spread only); reseeded: each "
                 "seed its own teacher and MIM chain (`--reseed-upstream`; the interval holds their spread too).")


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:.4g}, {hi:.4g}]" if not pd.isna(lo) else "–"


def _present(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    return [c for c in COMPARISONS if (table[f"n_{c[1]}"] > 0).any()]


def arms_section(runs: pd.DataFrame, metric: str,
                 figure: Callable[[str, Callable], str | None] | None = None) -> tuple[list[str], list[str]]:
    """(Markdown lines, notes) of a study's arms: the gain per stage and budget in ``metric`` with
    its interval against each control, then the same runs compared on the held-out losses, and
    (``figure``: the report's figure writer) the gain against budget."""
    table = weak_to_strong(runs, metric)
    if not table.empty:  # stages run in mim_init alone (seeds for the law) are the law's, not compared
        table = table[sum(table[f"n_{b}"] for _, b, _ in COMPARISONS) > 0].reset_index(drop=True)
    if table.empty:
        return [], []
    comparisons = _present(table)
    lines = ["## Weak-to-strong: MIM initialisation against its controls", "",
             "Arms: `mim_init` (vision tower from the rung's MIM stage, as the ladder does), `random_init` "
             "(random vision tower, text tower as in the ladder, the same CLIP samples), `random_init_compute` "
             "(the same, with the CLIP samples whose FLOPs equal mim_init's CLIP + MIM FLOPs, by the cost "
             "model) and `scratch` (both towers random). `budget`: mim_init's CLIP samples. Gain = "
             f"mean(mim_init) − mean(control) of the final `{metric}`. Each control answers its own question:",
             ""]  # fmt: skip
    lines += [f"- against `{b}`: {q}" for _, b, q in comparisons] + ["", INTERVAL_RULE, ""]
    out = table[["stage", "budget", "upstream"]].copy()
    for arm in ARMS:
        if (table[f"n_{arm}"] == 0).all():
            continue
        out[f"{arm} (n)"] = [f"{m:.4g} ± {s:.2g} ({int(n)})" if n else "–" for m, s, n in
                             zip(table[f"mean_{arm}"], table[f"sd_{arm}"].fillna(0.0), table[f"n_{arm}"],
                                 strict=True)]  # fmt: skip
    for a, b, _ in comparisons:
        key = f"{a}-{b}"
        out[f"gain vs {b}"] = [signed_gain(v) if not pd.isna(v) else "–" for v in table[key]]
        out[f"90 % vs {b}"] = [_interval(lo, hi) for lo, hi in zip(table[f"{key}_low"], table[f"{key}_high"],
                                                                    strict=True)]  # fmt: skip
        out[f"method vs {b}"] = table[f"{key}_method"]
    out["verdict (vs random_init)"] = [verdict(r) for _, r in table.iterrows()]
    lines += [md_table(out), "Cells: mean ± standard deviation over seeds (number of seeds).", ""]
    if (table["n_random_init_compute"] > 0).any():
        samples = table[["stage", "budget", "upstream", "samples_mim_init", "samples_random_init_compute"]]
        lines += ["CLIP samples seen (mean over seeds) of mim_init and of its compute-matched control:", "",
                  md_table(samples.rename(columns={"samples_mim_init": "mim_init samples",
                                                   "samples_random_init_compute": "random_init_compute samples"})),
                  ""]  # fmt: skip
    lines += _arm_losses(runs)
    if figure is not None:
        lines += gain_figure(runs, metric, figure)
    notes = []
    if (table["n_scratch"] == 0).any() and (table["n_random_init"] > 0).any():
        notes.append("weak-to-strong: stages without scratch runs train their text tower from scratch in "
                     "the ladder too, so random_init is the scratch arm there (or --arms left it out)")
    return lines, notes


def _arm_losses(runs: pd.DataFrame) -> list[str]:
    """The same comparison on the held-out losses, which keep separating the arms after top-1 has
    reached the colour plateau."""
    table = pd.concat([gains(runs, key) for key in ARM_LOSSES], ignore_index=True)
    if table.empty:
        return []
    out = table[["stage", "budget", "upstream", "control"]].copy()
    out["metric"] = [f"`{m}`" for m in table["metric"]]
    out["mim_init"] = [f"{v:.4g}" for v in table["mim_init"]]
    out["control mean"] = [f"{v:.4g}" for v in table["control_mean"]]
    out["gain (lower loss)"] = [signed_gain(v) for v in table["gain"]]
    out["90 %"] = [_interval(lo, hi) for lo, hi in zip(table["low"], table["high"], strict=True)]
    out["method"] = table["method"]
    out["verdict"] = [verdict(pd.Series({"g_low": lo, "g_high": hi}), "g")
                      for lo, hi in zip(table["low"], table["high"], strict=True)]  # fmt: skip
    return ["Held-out losses, same runs (lower is better; gain = mean(control) − mean(mim_init)):", "",
            md_table(out), ""]


def gain_figure(runs: pd.DataFrame, metric: str, figure: Callable[[str, Callable], str | None]) -> list[str]:
    """The gain against budget, drawn when some stage ran at two budgets or more."""
    by_metric = {key: gains(runs, key) for key in (metric, *ARM_LOSSES)}
    if not any(t.groupby("stage")["budget"].nunique().gt(1).any() for t in by_metric.values() if not t.empty):
        return []
    # matplotlib loads with the first figure
    from scaling.analysis.plots import arms as arms_plot

    img = figure("weak_to_strong_budgets", lambda: arms_plot.gain_curves(by_metric))
    return [f"![gain against budget]({img})", ""] if img else []
