"""A finished stage given by folder or by name (``clip@L14``): its resolved config and weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from scaling.export.errors import ExportError
from scaling.kinds import split_stage_name
from scaling.stage_state import final_manifest, newest_finished, read_state

CONFIG_FILE = "config.yaml"  # the resolved config a stage writes into its folder when it starts


@dataclass
class FinishedStage:
    out_dir: Path
    cfg: Any  # the stage's resolved DictConfig
    manifest: dict[str, Any]  # of its final/ checkpoint: step, samples_seen, image_size, metrics

    @property
    def name(self) -> str:
        return str(self.cfg.stage.name or f"{self.cfg.stage.kind}@{self.cfg.stage.rung}")

    @property
    def run_id(self) -> str | None:
        return read_state(self.out_dir).get("run_id") or None


def find_stage(target: str, runs_dir: str | Path = "runs", experiment: str | None = None) -> FinishedStage:
    """``target``: a stage folder, or a stage name looked up as the newest finished
    ``RUNS/<experiment>/<name>-*`` (any experiment unless given)."""
    path = Path(target).expanduser()
    if not path.is_dir():
        if split_stage_name(target) is None:
            raise ExportError(f"{target}: neither a stage folder nor a stage name like clip@L14")
        found = newest_finished(runs_dir, target, experiment)
        if found is None:
            where = f"{runs_dir}/{experiment or '*'}/{target}-*"
            raise ExportError(f"no finished stage {target} under {where}; run it (python -m scaling.ladder) "
                              "or give its folder")
        path = found
    manifest = final_manifest(path)
    if manifest is None:
        raise ExportError(f"{path} has no complete final/ checkpoint: is it a stage folder, and did the "
                          "stage finish?")
    config = path / CONFIG_FILE
    if not config.is_file():
        raise ExportError(f"{path} lacks {CONFIG_FILE} (the resolved config a stage writes when it starts)")
    return FinishedStage(path, OmegaConf.load(config), manifest)
