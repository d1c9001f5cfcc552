"""The metric spool and the JSONL logger keep each (key, step) once across restarts."""

from __future__ import annotations

from scaling.metrics import JsonlLogger
from scaling.train.spool import SPOOL_FILE, MetricSpool


def test_jsonl_logger_drops_steps_its_file_holds_and_a_cut_line(tmp_path):
    path = tmp_path / "m.jsonl"
    first = JsonlLogger(path)
    for step in (1, 2, 3):
        first.log_metrics({"loss": float(step)}, step)
    with path.open("a") as f:
        f.write('{"step": 4, "lo')  # a kill in the middle of a write
    again = JsonlLogger(path)  # a resumed process: steps 2-4 again, then new ones
    for step in (2, 3, 4, 5):
        again.log_metrics({"loss": 10.0 * step, "eval": 1.0}, step)
    rows = again.read()
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in rows if "loss" in r and r["step"] <= 3] == [1.0, 2.0, 3.0]  # the first value wins
    assert [r["step"] for r in rows if "eval" in r] == [2, 3, 4, 5]  # a new key starts where it starts


def test_spool_resend_delivers_what_the_store_missed_once(tmp_path):
    killed = MetricSpool(tmp_path, JsonlLogger(tmp_path / "store.jsonl"))
    for step in range(1, 6):
        killed.log_metrics({"loss": float(step)}, step)
    killed.sync()
    # the store lost its tail (an MLflow buffer never sent): keep steps 1-2 only
    store = tmp_path / "store.jsonl"
    store.write_text("".join(store.read_text().splitlines(keepends=True)[:2]))
    resumed = MetricSpool(tmp_path, JsonlLogger(store))
    assert resumed.resend() == 5
    for step in range(4, 8):  # resumed from a checkpoint at step 3
        resumed.log_metrics({"loss": 100.0 + step}, step)
    rows = JsonlLogger(store).read()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["loss"] for r in rows] == [1, 2, 3, 4, 5, 106, 107]
    assert [r["step"] for r in JsonlLogger(tmp_path / SPOOL_FILE).read()] == [1, 2, 3, 4, 5, 6, 7]
