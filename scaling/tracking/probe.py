"""Can the MLflow store be reached, and does the experiment exist? Asked without importing
MLflow (``ladder status`` stays light): the REST API of a server, the tables of a SQLite file.
Every line names the store masked (``scaling.uris.mask``)."""

from __future__ import annotations

import base64
import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

from scaling.tracking.store import sqlite_path
from scaling.uris import mask, mask_text


def _get(uri: str, path: str, timeout_s: float) -> None:
    """GET ``path`` of the server at ``uri``; raises what urllib raises. ``user:password@`` goes
    in a Basic header, as MLflow's own client sends it: urllib would take it for part of the host."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(f"{parts.scheme}://{host}{parts.path.rstrip('/')}{path}")
    if parts.username is not None:
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    with urllib.request.urlopen(request, timeout=timeout_s):
        return


def store_problem(uri: str, experiment: str, timeout_s: float = 5.0) -> str | None:
    """One line saying why ``experiment`` cannot be read at ``uri``, or None when it can (or
    when the store is of a kind this does not check: PostgreSQL, MySQL, Databricks, file)."""
    shown = mask(uri)
    if uri.startswith(("http://", "https://")):
        query = urllib.parse.urlencode({"experiment_name": experiment})
        try:
            _get(uri, f"/api/2.0/mlflow/experiments/get-by-name?{query}", timeout_s)
            return None
        except urllib.error.HTTPError as exc:
            code = _error_code(exc)
            if code == "RESOURCE_DOES_NOT_EXIST":
                return f"experiment '{experiment}' does not exist at {shown} (nothing was recorded there yet)"
            return f"MLflow at {shown} answered {exc.code} {code or exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            return f"cannot reach MLflow at {shown}: {_reason(exc)}"
    db = sqlite_path(uri)
    if db is None:
        return None
    if not db.is_file():
        return f"no MLflow store at {db}: nothing was recorded there (check --tracking-uri)"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout_s) as con:
            found = con.execute("SELECT lifecycle_stage FROM experiments WHERE name = ?", (experiment,)).fetchone()
    except sqlite3.Error as exc:
        return f"cannot read the MLflow store {db}: {exc}"
    if found is None:
        return f"experiment '{experiment}' does not exist in {db} (nothing was recorded there yet)"
    return f"experiment '{experiment}' is deleted in {db}" if found[0] == "deleted" else None


def unreachable(uri: str, timeout_s: float = 10.0) -> str | None:
    """Why an MLflow server at ``uri`` does not answer at all, or None (it answers, whatever it
    says, or ``uri`` is not a server: a database is opened by each process itself)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        _get(uri, "/health", timeout_s)
        return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        return _reason(exc)


def _reason(exc: Exception) -> str:
    return mask_text(str(getattr(exc, "reason", exc)))


def _error_code(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read() or b"{}").get("error_code") or "")
    except ValueError:
        return ""
