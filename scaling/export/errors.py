"""What a wrong stage, folder or results file raises: one line naming it and what to do."""

from __future__ import annotations


class ExportError(ValueError):
    """A user error of ``python -m scaling.export`` (exit 2)."""
