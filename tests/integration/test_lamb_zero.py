"""LAMB under DeepSpeed ZeRO 1-3 on 2 CPU ranks takes the same steps as without partitioning.

ZeRO hands the optimizer flat partitions that cut parameters at arbitrary places; the trust
ratios must still be per model parameter. The control run (partitions not registered with the
LAMB, i.e. ratios per partition) must differ, or the comparison would prove nothing.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.integration

STEPS = 4
RUNS = [(0, True), (1, True), (2, True), (3, True), (1, False)]  # (ZeRO stage, per-parameter)
# bf16 (the recipes' precision): DeepSpeed's stage-0 bf16 path (FP16_UnfusedOptimizer) rounds
# differently from its ZeRO optimizers, so ZeRO-1 (partitions cut across parameters) is compared
# with ZeRO-3 (every parameter cut in two).
BF16_RUNS = [(1, True), (3, True), (1, False)]
RESUMED = [1, 3]  # the E/14+ and 8B/18B recipes' stages


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    # Odd sizes so that partition boundaries fall inside parameters.
    return torch.nn.Sequential(torch.nn.Linear(13, 37), torch.nn.GELU(), torch.nn.LayerNorm(37),
                               torch.nn.Linear(37, 29), torch.nn.GELU(), torch.nn.Linear(29, 5))


def _groups(model: torch.nn.Module) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim == 2)]
    return [{"params": decay[:2], "weight_decay": 0.05, "lr": 0.02},  # layer decay: two lrs
            {"params": decay[2:], "weight_decay": 0.05, "lr": 0.01},
            {"params": rest, "weight_decay": 0.0, "lr": 0.02}]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import deepspeed

    from scaling.train.lamb import Lamb
    from scaling.train.zero_layout import shard_lamb

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)

    def engine_for(stage: int, per_parameter: bool, bf16: bool = False):
        model = _model()
        lamb = Lamb(_groups(model), lr=0.02, betas=(0.9, 0.98), eps=1e-6)
        config = {"train_batch_size": 8 * world, "train_micro_batch_size_per_gpu": 8,
                  "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
                  "gradient_clipping": 0.0, "steps_per_print": 1 << 30, "bf16": {"enabled": bf16}}
        engine, zero_opt, _, _ = deepspeed.initialize(model=model, optimizer=lamb, config=config)
        if stage >= 1 and per_parameter:
            assert shard_lamb(lamb, zero_opt, stage) >= 1
        return engine

    def train(engine, steps: range) -> None:
        for step in steps:
            gen = torch.Generator().manual_seed(100 * step + rank)
            x, y = torch.randn(8, 13, generator=gen), torch.randn(8, 5, generator=gen)
            x = x.to(next(engine.module.parameters()).dtype)  # bf16 engines hold a bf16 model
            engine.backward(torch.nn.functional.mse_loss(engine(x).float(), y))
            engine.step()

    def weights(engine, stage: int) -> list[float]:
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
            return torch.cat([p.detach().flatten().float() for p in params]).tolist()

    results = {}
    for stage, per_parameter in RUNS:
        engine = engine_for(stage, per_parameter)
        train(engine, range(STEPS))
        results[f"{stage}-{per_parameter}"] = weights(engine, stage)
    for stage, per_parameter in BF16_RUNS:
        engine = engine_for(stage, per_parameter, bf16=True)
        train(engine, range(STEPS))
        results[f"{stage}-{per_parameter}-bf16"] = weights(engine, stage)
    for stage in RESUMED:  # half the steps, a checkpoint, a fresh engine that loads it, the rest
        engine = engine_for(stage, True)
        train(engine, range(STEPS // 2))
        engine.save_checkpoint(str(Path(out).parent / f"ckpt{stage}"), tag="t")
        engine = engine_for(stage, True)
        engine.load_checkpoint(str(Path(out).parent / f"ckpt{stage}"), tag="t")
        train(engine, range(STEPS // 2, STEPS))
        results[f"{stage}-resumed"] = weights(engine, stage)
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("lamb_zero") / "weights.json"
    mp.spawn(_rank_main, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return {k: torch.tensor(v) for k, v in json.loads(out.read_text()).items()}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_lamb_under_zero_steps_as_without_partitioning(weights: dict, stage: int) -> None:
    start = torch.cat([p.detach().flatten() for p in _model().parameters()])
    reference, sharded = weights["0-True"], weights[f"{stage}-True"]
    assert not torch.equal(reference, start)  # it trained
    torch.testing.assert_close(sharded, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", RESUMED)
def test_lamb_under_zero_resumes_from_a_deepspeed_checkpoint(weights: dict, stage: int) -> None:
    torch.testing.assert_close(weights[f"{stage}-resumed"], weights[f"{stage}-True"], rtol=1e-6, atol=1e-7)


def test_lamb_in_bf16_steps_the_same_under_zero1_and_zero3(weights: dict) -> None:
    zero1, zero3, per_partition = weights["1-True-bf16"], weights["3-True-bf16"], weights["1-False-bf16"]
    torch.testing.assert_close(zero3, zero1, rtol=0, atol=0)
    assert (per_partition != zero1).float().mean() > 0.1  # one ratio per partition moves many weights


def test_ratios_per_partition_would_differ(weights: dict) -> None:
    reference, per_partition = weights["0-True"], weights["1-False"]
    assert (per_partition - reference).abs().max() > 1e-4
