"""Where a researcher looks: the MLflow UI address that opens an experiment's runs table, and the
experiment's description.

MLflow 3.17's UI does not choose an experiment's page from ``mlflow.experimentKind``: a fresh
browser profile opens the GenAI overview (traces, token usage). The page follows
``workflowType``, read from the address and then kept in the browser's local storage, and the
runs table is the experiment's ``/runs`` tab, so the address given is
``<ui>/#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=scaling``.

Its table would otherwise fold the stages under the ladder's parent run and show no metric
column; ``publish_view`` stores a shared view (MLflow's "share" feature: an experiment tag
``mlflow.sharedViewState.<key>`` holding the view as JSON) that sorts the runs by the zero-shot
metric, which lists the stage runs flat, and shows that metric's column first.

``python -m scaling.tracking.ui`` (``make ui``) prints that address for every experiment of a
store, then starts ``mlflow ui`` on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from urllib.parse import urlsplit

from scaling.tracking import store
from scaling.uris import mask, mask_text

DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` (and `make ui`) serves a SQLite store
WORKFLOW = "machine_learning"  # MLflow's workflowType of training runs (the other is "genai")
NOTE_TAG = "mlflow.note.content"  # the experiment's description in the UI (Markdown)
VIEW_KEY = "scaling"  # the shared view's key: experiment tag mlflow.sharedViewState.scaling
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
X_AXIS = "train/samples_seen"  # the charts' x axis in the stored view (metric steps are optimiser steps)


def ui_base(uri: str | None) -> str:
    """The UI's address for store ``uri``: a tracking server serves its own UI; a SQLite store is
    browsed through ``mlflow ui`` on the default port."""
    resolved = store.resolve_uri(uri)
    return resolved.rstrip("/") if urlsplit(resolved).scheme in ("http", "https") else DEFAULT_UI


def runs_url(experiment_id: str, base: str = DEFAULT_UI, view: bool = True) -> str:
    """The address that opens the experiment's runs table (training runs), whatever the browser;
    ``view``: in the view ``publish_view`` stored (the address fails over to MLflow's own when none is)."""
    share = f"&viewStateShareKey={VIEW_KEY}" if view else ""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType={WORKFLOW}{share}"


def metric_column(key: str) -> str:
    """MLflow UI's column id of metric ``key`` (names with ``/`` or ``.`` in backquotes)."""
    return f"metrics.`{key.replace('`', '``')}`"


def view_state(metrics: list[str], ascending: bool = False) -> dict[str, object]:
    """The runs table sorted by ``metrics[0]`` (best first), the ``metrics`` columns shown."""
    return {"searchFilter": "", "orderByKey": metric_column(metrics[0]), "orderByAsc": ascending, "startTime": "ALL",
            "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": [metric_column(m) for m in metrics], "columnOrder": [metric_column(m) for m in metrics],
            # charts against samples seen, so stages of different batch sizes line up (steps do not)
            "globalLineChartConfig": {"xAxisKey": "metric", "lineSmoothness": 0, "selectedXAxisMetricKey": X_AXIS}}


def publish_view(uri: str | None, experiment: str, metrics: list[str], ascending: bool = False) -> str:
    """Store the experiment's shared runs view (see the module's note); its experiment id."""
    experiment_id = store.get_or_create_experiment(experiment, uri)
    text = json.dumps(view_state(metrics, ascending))
    store.with_retries(lambda: store.client(uri).set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, text))
    return experiment_id


def ui_command(uri: str | None) -> str | None:
    """The command that serves a SQLite store's UI; ``None`` for a server (it serves its own)."""
    resolved = store.resolve_uri(uri)
    return None if urlsplit(resolved).scheme in ("http", "https") else f"mlflow ui --backend-store-uri {resolved}"


def where_to_look(uri: str | None, experiment: str) -> list[str]:
    """Lines telling how to open ``experiment``'s runs table (empty if it does not exist, or the
    store cannot be read: a pointer is no reason to fail a command that has done its work)."""
    try:
        found = store.client(uri, create=False).get_experiment_by_name(experiment)
    except Exception:  # no store yet (FileNotFoundError), a server or database that is down
        return []
    if found is None:
        return []
    command = ui_command(uri)
    lines = [f"MLflow: {command}" if command else f"MLflow: {ui_base(uri)}"]
    view = VIEW_TAG_PREFIX + VIEW_KEY in found.tags
    lines.append(f"  then open {runs_url(found.experiment_id, ui_base(uri), view)}   (experiment '{experiment}')")
    return [mask_text(line) for line in lines]  # a server URL's password stays out of the console


def describe_experiment(uri: str | None, experiment: str, text: str) -> None:
    """Set the experiment's description (the Markdown above its runs table), creating it if needed."""
    experiment_id = store.get_or_create_experiment(experiment, uri)
    store.with_retries(lambda: store.client(uri).set_experiment_tag(experiment_id, NOTE_TAG, text))


def ladder_description(title: str, command: str, report: str) -> str:
    """The description of a ladder's (or study's) experiment: what it is, how it ran, where the report is."""
    return (f"**{title}**\n\nLast run with: `{command}`\n\nReport: `{report}` (written when the stages end; "
            "also attached to the parent run). Each child run is one stage; the parent run carries the plan "
            "and the stages' headline metrics.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaling.tracking.ui",
                                     description="Print the address of every experiment's runs table, then "
                                     "serve the store with `mlflow ui`.")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--print-only", action="store_true", help="print the addresses; do not start the UI")
    args = parser.parse_args(argv)
    uri = store.resolve_uri(args.tracking_uri)
    base = ui_base(uri) if ui_command(uri) is None else f"http://127.0.0.1:{args.port}"
    try:
        experiments = store.client(uri, create=False).search_experiments()
    except FileNotFoundError as exc:
        print(f"scaling.tracking.ui: error: {exc}", file=sys.stderr)
        return 2
    for exp in sorted(experiments, key=lambda e: e.name):
        print(f"{exp.name}: {runs_url(exp.experiment_id, base, VIEW_TAG_PREFIX + VIEW_KEY in exp.tags)}")
    if args.print_only or ui_command(uri) is None:
        return 0
    print(f"serving {mask(uri)} at {base} (Ctrl-C stops)", flush=True)
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
