"""Which runs a law is fitted through: the compute frontier, LAION-style (Cherti et al. 2023).

The best run per log-spaced compute bin, then the Pareto frontier of those, so that an
under-trained run at a given compute does not pull the law down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def pareto_frontier(x: ArrayLike, y: ArrayLike, minimize: bool = True) -> np.ndarray:
    """Indices of the points that no point with less (or equal) ``x`` beats, sorted by ``x``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sign = 1.0 if minimize else -1.0
    order = np.lexsort((sign * y, x))
    best, keep = math.inf, []
    for i in order:
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        if sign * y[i] < best:
            best = sign * y[i]
            keep.append(i)
    return np.array(keep, dtype=int)


def binned_frontier(
    x: ArrayLike, y: ArrayLike, bins_per_decade: int = 4, minimize: bool = True
) -> np.ndarray:
    """LAION-style selection: the best point per log-spaced ``x`` bin, then its Pareto frontier."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & (x > 0))
    if len(ok) == 0:
        return np.array([], dtype=int)
    bins = np.floor(np.log10(x[ok]) * bins_per_decade).astype(int)
    sign = 1.0 if minimize else -1.0
    best: dict[int, int] = {}
    for i, b in zip(ok, bins, strict=True):
        if b not in best or sign * y[i] < sign * y[best[b]]:
            best[b] = i
    chosen = np.array(sorted(best.values()), dtype=int)
    return chosen[pareto_frontier(x[chosen], y[chosen], minimize)]
