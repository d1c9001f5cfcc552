"""A stage folder's facts in one place: its state (a complete final/ checkpoint means finished),
its MLflow run id, and the tags that name it in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from scaling.stage_state import (
    read_state,
    remember_run_id,
    stage_run_id,
    stage_tags,
    write_state,
)
from scaling.train.stage import finished_result


def _final(out: Path, step: int = 6, size: int | None = None) -> None:
    final = out / "final"
    final.mkdir(parents=True)
    (final / "model.pt").write_bytes(b"12345")
    manifest = {"step": step, "samples_seen": step * 8, "metrics": {"eval/synth_cls/top1": 0.25},
                "files": {"model.pt": 5 if size is None else size}}
    (final / "manifest.json").write_text(json.dumps(manifest))


def test_a_complete_final_checkpoint_means_finished_whatever_the_file_says(tmp_path: Path) -> None:
    write_state(tmp_path, "failed", run_id="r1", error="killed after the final save")
    _final(tmp_path)
    state = read_state(tmp_path)
    assert (state["state"], state["step"], state["samples_seen"], state["error"]) == ("finished", 6, 48, None)
    assert state["run_id"] == "r1" and state["metrics"] == {"eval/synth_cls/top1": 0.25}
    done = finished_result(tmp_path)  # the stage itself reads the same checkpoint
    assert done is not None and (done.status, done.steps, done.checkpoint) == ("finished", 6, str(tmp_path / "final"))


def test_a_broken_final_checkpoint_does_not(tmp_path: Path) -> None:
    write_state(tmp_path, "preempted")
    _final(tmp_path, size=99)  # the manifest promises bytes the file does not have
    assert read_state(tmp_path)["state"] == "preempted"
    assert finished_result(tmp_path) is None
    assert read_state(tmp_path / "never-ran") == {}


def test_the_run_id_lives_in_the_state_file(tmp_path: Path) -> None:
    assert stage_run_id(tmp_path) is None
    remember_run_id(tmp_path, "abc")
    assert read_state(tmp_path)["state"] == "planned" and stage_run_id(tmp_path) == "abc"
    write_state(tmp_path, "running", job_id="7")
    remember_run_id(tmp_path, "abc")  # the state it had stays
    assert (read_state(tmp_path)["state"], stage_run_id(tmp_path)) == ("running", "abc")
    assert not (tmp_path / "mlflow_run_id").exists()


def test_stage_tags_name_the_stage_kind_at_rung() -> None:
    assert stage_tags("clip", "B16") == {"stage": "clip@B16", "kind": "clip", "rung": "B16"}
    assert stage_tags("clip", "18B", "clip@18B.random_init.s1")["stage"] == "clip@18B.random_init.s1"
