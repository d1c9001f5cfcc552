"""The files a stage's MLflow run keeps: its resolved ``config.yaml`` (written with URI passwords
masked, ``scaling.config.save_resolved``) and its final ``progress.json`` (every metric's last
value), logged by the job on rank 0."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from scaling import tracking
from scaling.stage_state import PROGRESS_FILE
from scaling.uris import error_line

log = logging.getLogger("scaling.launch")
STAGE_FILES = ("config.yaml", PROGRESS_FILE)


def log_stage_files(cfg: DictConfig) -> None:
    """Upload the stage's files to its run (those that exist); a failure warns, the stage stands."""
    out, run_id = Path(cfg.out_dir), cfg.tracking.run_id
    if not run_id:
        return
    try:
        mlc = tracking.client(cfg.tracking.uri)
        for name in STAGE_FILES:
            if (out / name).is_file():
                mlc.log_artifact(run_id, str(out / name))
    except Exception as exc:
        log.warning("stage files not logged to MLflow run %s: %s", run_id, error_line(exc))
