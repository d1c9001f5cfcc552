"""scaling.batching: the one batch layout of the loop, the planner and the rung command."""

from __future__ import annotations

from scaling.batching import apply_auto_micro_batch, batch_layout, tasks_per_node, world
from scaling.config import load_stage_config
from scaling.ladder import plan_ladder


def test_batch_layout_and_process_count():
    assert batch_layout(64, 4) == (16, 1, True)  # no micro-batch: batch / processes
    assert batch_layout(64, 4, 8) == (8, 2, True)
    assert batch_layout(64, 3, 8) == (8, 0, False)  # 3 x 8 does not divide 64
    assert tasks_per_node({"gpus_per_node": 8, "tasks_per_node": 1}) == 8
    assert tasks_per_node({"gpus_per_node": 0, "tasks_per_node": 2}) == 2
    assert world({"nodes": 45, "gpus_per_node": 8}) == (45, 8, 360)


def test_auto_micro_batch_is_the_planners_for_a_stage_started_alone(tmp_path):
    overrides = ["resources.micro_batch=auto", "resources.nodes=45", "train.batch_size=108000"]
    plan = plan_ladder("E14", "18B", proxy=False, runs_dir=tmp_path, allow_missing_teacher=True,
                       overrides=[f"clip@18B.{o}" for o in overrides])
    planned = int(plan.stage("clip@18B").cfg.train.micro_batch)
    alone = load_stage_config("clip", "18B", proxy=False, overrides=overrides)
    assert alone.train.micro_batch is None
    assert apply_auto_micro_batch(alone) is None and alone.train.micro_batch == planned
    proxy = load_stage_config("clip", "18B", proxy=True, overrides=["resources.micro_batch=auto"])
    assert apply_auto_micro_batch(proxy) is None and proxy.train.micro_batch is None  # CPU: batch / processes
    tiny = load_stage_config("clip", "18B", proxy=False, overrides=[*overrides, "resources.nodes=1",
                                                                    "train.batch_size=8", "distributed.zero_stage=0",
                                                                    "distributed.deepspeed=false"])
    note = apply_auto_micro_batch(tiny)
    assert note and "clip@18B" in note and "fits" in note
