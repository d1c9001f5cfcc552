"""When the loop logs, evaluates and checkpoints (``train.cadence``), from a resolved config."""

from __future__ import annotations

from scaling.config import load_stage_config
from scaling.train.cadence import Cadence


def cadence(*overrides: str) -> Cadence:
    cfg = load_stage_config("clip", "B16", proxy=True, overrides=["train.samples=160", "train.batch_size=32",
                                                                  *overrides])
    return Cadence(cfg, total_steps=5)


def test_evaluation_follows_samples_seen_and_leaves_the_last_step_to_the_end():
    due = cadence("eval.every_samples=48")  # a batch of 32 does not divide it
    steps = [s for s in range(1, 6) if due.evaluate(s, 32 * s, 32)]
    assert steps == [2, 3]  # past 48 at 64 samples, past 96 at 96; 144 falls in step 5, the final one
    assert not any(cadence("eval.every_samples=0").evaluate(s, 32 * s, 32) for s in range(1, 6))


def test_logs_and_checkpoints_by_step():
    due = cadence("train.log_every=2", "train.ckpt_every=2")
    assert [s for s in range(1, 6) if due.log(s)] == [2, 4, 5]  # the last step always logs
    assert [s for s in range(1, 6) if due.checkpoint(s)] == [2, 4]  # the final checkpoint is the loop's
    assert not any(cadence("train.ckpt_every=0").checkpoint(s) for s in range(1, 6))
