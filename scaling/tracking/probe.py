"""Can the MLflow store be reached, and does the experiment exist? Asked without importing
MLflow (``ladder status`` stays light): the REST API of a server, the tables of a SQLite file."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

from scaling.tracking.store import sqlite_path


def store_problem(uri: str, experiment: str, timeout_s: float = 5.0) -> str | None:
    """One line saying why ``experiment`` cannot be read at ``uri``, or None when it can (or
    when the store is of a kind this does not check: PostgreSQL, MySQL, Databricks, file)."""
    if uri.startswith(("http://", "https://")):
        query = urllib.parse.urlencode({"experiment_name": experiment})
        url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                return None
        except urllib.error.HTTPError as exc:
            code = _error_code(exc)
            if code == "RESOURCE_DOES_NOT_EXIST":
                return f"experiment '{experiment}' does not exist at {uri} (nothing was recorded there yet)"
            return f"MLflow at {uri} answered {exc.code} {code or exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            return f"cannot reach MLflow at {uri}: {getattr(exc, 'reason', exc)}"
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
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _error_code(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read() or b"{}").get("error_code") or "")
    except ValueError:
        return ""
