"""Markdown pieces of the report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    if df.empty:
        return "_(none)_\n"

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if math.isnan(v) else format(float(v), floatfmt)
        return str(v).replace("|", "\\|") if v is not None else "–"

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows]) + "\n"


def human(v) -> str:
    """A number in short form (``1.2T``), or an en dash for a missing one."""
    # matplotlib loads with the first figure: importing the report stays light
    from scaling.analysis.plots.style import human as short

    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else short(float(v))
