"""Where a fit's interval draws come from: resamples of whole runs (with replacement), or, with
too few runs for a bootstrap, the fit's multivariate-t sampling distribution."""

from __future__ import annotations

import numpy as np


def bootstrap_indices(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one resample that draws whole groups (runs) with replacement."""
    keys = np.unique(groups)
    drawn = rng.choice(keys, size=len(keys), replace=True)
    return np.concatenate([np.flatnonzero(groups == k) for k in drawn])


def resample_weights(groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n x points) multiplicities: how often each point enters each group resample."""
    keys, inverse = np.unique(groups, return_inverse=True)
    draws = rng.integers(0, len(keys), (n, len(keys)))
    counts = np.stack([np.bincount(d, minlength=len(keys)) for d in draws]) if n else np.empty((0, len(keys)))
    return counts[:, inverse].astype(float)


def t_draws(lx: np.ndarray, ly: np.ndarray, params: np.ndarray, offset: bool, n: int,
            rng: np.random.Generator) -> np.ndarray:
    """Parameter draws from the fit's multivariate-t sampling distribution: covariance
    ``s² (JᵀJ)⁻¹`` from the log residuals (``s²`` on ``n - k`` degrees of freedom), ``J`` the
    Jacobian of the log curve. Used where too few runs exist for a bootstrap over runs."""
    k = len(params)
    core = np.exp(params[0] + params[1] * lx)
    pred = core + (params[2] if offset else 0.0)
    share = core / pred
    cols = [share, share * lx] + ([1.0 / pred] if offset else [])
    jac = np.stack(cols, axis=1)
    dof = len(lx) - k
    s2 = float(np.sum((ly - np.log(pred)) ** 2)) / dof
    try:
        cov = s2 * np.linalg.inv(jac.T @ jac)
        chol = np.linalg.cholesky(cov + 1e-18 * np.eye(k))
    except np.linalg.LinAlgError:
        return np.empty((0, k))
    z = rng.standard_normal((n, k)) @ chol.T
    scale = np.sqrt(dof / rng.chisquare(dof, (n, 1)))
    return params + z * scale
