"""Analysis of scaling studies from MLflow records: tables, power-law fits, plots, reports.

Importing this package loads neither mlflow nor matplotlib; the names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "runs_frame": "scaling.analysis.load",
    "metric_history": "scaling.analysis.load",
    "AnalysisError": "scaling.analysis.load",
    "fit_power_law": "scaling.analysis.fits",
    "PowerLawFit": "scaling.analysis.power_law",
    "FitError": "scaling.analysis.power_law",
    "record_prediction": "scaling.analysis.predict",
    "write_report": "scaling.analysis.report",
    "build_report": "scaling.analysis.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scaling.analysis' has no attribute {name!r}")
