"""The one error type for unusable data: it names the file or pattern and what to do."""

from __future__ import annotations


class DataError(ValueError):
    """A data source that cannot be used (no matching file, no usable sample, bad layout)."""
