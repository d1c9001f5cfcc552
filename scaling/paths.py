"""Where the project's own files live, so configs resolve the same from any working directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = Path(os.environ.get("SCALING_EXPERIMENTS", REPO_ROOT / "experiments"))
LADDERS_DIR = EXPERIMENTS_DIR / "ladders"
DEFAULT_LADDER = LADDERS_DIR / "eva.yaml"  # the EVA ladder: its rungs' order is the ladder order
SWEEPS_DIR = Path(os.environ.get("SCALING_SWEEPS", REPO_ROOT / "sweeps"))
