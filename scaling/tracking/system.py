"""MLflow's system metrics (CPU, memory, disk, network; GPU utilisation and memory where
``pynvml`` sees GPUs) on a stage's run, from local rank 0 of every node, keyed by its hostname:
``system/<host>/cpu_utilization_percentage``, so a slow or memory-starved node shows in the UI.

A sample costs the monitor thread a few milliseconds of CPU (``benchmarks/bench_system_metrics.py``);
at ``tracking.system_metrics_s`` = 10 s that is well inside the 0.5 % tracking budget (docs/tracking.md).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from scaling.tracking import store
from scaling.uris import error_line

log = logging.getLogger("scaling.tracking")
SAMPLE_EVERY_S = 10.0  # the default of tracking.system_metrics_s


def start_system_metrics(uri: str | None, run_id: str | None, local_rank: int,
                         every_s: float = SAMPLE_EVERY_S) -> Any:
    """Start MLflow's monitor on run ``run_id`` (local rank 0, ``every_s`` > 0); the monitor, to
    ``finish()``, or ``None``. A requeued stage continues the run's system-metric steps."""
    if not run_id or local_rank != 0 or every_s <= 0:
        return None
    try:
        import mlflow
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        node = socket.gethostname()
        mlflow.set_system_metrics_node_id(node)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, samples_before_logging=1,
                                       resume_logging=True, node_id=node, tracking_uri=store.resolve_uri(uri))
        monitor.start()
        return monitor
    except Exception as exc:  # system metrics must never stop a stage
        log.warning("MLflow system metrics not logged for run %s: %s", run_id, error_line(exc))
        return None


def stop_system_metrics(monitor: Any) -> None:
    if monitor is not None:
        try:
            monitor.finish()
        except Exception as exc:
            log.warning("MLflow system metrics did not stop cleanly: %s", error_line(exc))
