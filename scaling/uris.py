"""Store URIs (MLflow tracking and artifact stores, Optuna storage): credentials masked wherever
a URI is shown or recorded, the schemes MLflow accepts, and the driver a bare ``postgresql://``
takes.

A URI's password (``scheme://user:PASSWORD@host``) and credential query parameters
(``?password=...``, ``?token=...``) are shown as ``***``. The real value travels to a job only
in its environment or in the pickled job; everything written down (logs, ``config.yaml``,
MLflow params and tags, console lines) goes through :func:`mask` or :func:`mask_text`.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# user:password@ in the authority part of any scheme:// (up to its last '@': a password may hold one)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*):(?P<secret>[^/\s'\"]*)@")
# ?password=... &token=... (MySQL, Databricks and SQLAlchemy drivers take credentials there too)
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|token|access_token|secret)=)(?P<secret>[^&\s'\"#]*)",
                    re.IGNORECASE)

# Schemes MLflow's tracking store accepts (a path without a scheme is a local store).
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "http", "https", "databricks")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def mask_text(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["secret"] else m[0], text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}" if m["secret"] else m[0], text)


def mask(uri: Any) -> Any:
    """One URI (or any value) as it may be shown or recorded; non-strings pass unchanged."""
    return mask_text(uri) if isinstance(uri, str) else uri


def error_line(exc: BaseException, limit: int = 200) -> str:
    """An error's first non-empty line for a warning, masked (MLflow's messages repeat the URL they
    requested); its type's name when it says nothing."""
    line = next((text for text in str(exc).splitlines() if text.strip()), type(exc).__name__)
    return mask_text(line.strip()[:limit])


def has_secret(text: str) -> bool:
    return mask_text(text) != text


def mask_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """A (nested) mapping with every string value masked: a config before it is saved or logged."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out[key] = mask_mapping(value)
        elif isinstance(value, list):
            out[key] = [mask_mapping(v) if isinstance(v, Mapping) else mask(v) for v in value]
        else:
            out[key] = mask(value)
    return out


def check_tracking_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be an MLflow tracking URI (None: it can)."""
    match = _SCHEME.match(uri)
    if match is None:
        return None if "://" not in uri else "it has no scheme before '://'"
    scheme = match.group(1).lower()
    base = scheme.split("+", 1)[0]
    if base not in TRACKING_SCHEMES or ("+" in scheme and base not in ("postgresql", "mysql")):
        return (f"scheme '{scheme}' is not one MLflow tracks to: use a path, "
                f"{', '.join(s + '://' for s in TRACKING_SCHEMES)} (postgresql+DRIVER, mysql+DRIVER too)")
    return None


def rdb_url(url: str) -> str:
    """The SQLAlchemy URL for a database URL: a bare ``postgresql://`` takes the psycopg2 driver
    (the project's dependency) when psycopg 3, SQLAlchemy 2.1's default for it, is not installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


class MaskedStream:
    """A text stream that masks URI passwords in what is written through it (a library's own
    console lines, e.g. MLflow's "View run ... at: URL")."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(mask_text(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
