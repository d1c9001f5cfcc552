"""Where a process sits in the job: torchrun's variables, SLURM's, or a single process."""

from __future__ import annotations

import pytest

from scaling.train.distributed import DistributedError, detect, first_slurm_host, pick_backend


def test_single_process_without_launcher():
    env = detect({})
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)


def test_torchrun_variables():
    env = detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (3, 4, 1, "n1", 1234)
    assert env.source == "torchrun"


def test_slurm_variables_and_master_from_the_node_list():
    env = detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
                  "SLURM_JOB_NODELIST": "gpu[07-08],cpu1"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 8, 1, "slurm")
    assert env.master_addr == "gpu07"
    assert env.master_port == 20000 + 4242  # the same on every task of the job


def test_torchrun_wins_over_slurm():
    env = detect({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"})
    assert env.world_size == 2 and env.source == "torchrun"


@pytest.mark.parametrize("nodelist, first", [("node01", "node01"), ("n[3-5]", "n3"), ("a[1,4],b2", "a1")])
def test_first_host_without_scontrol(nodelist, first, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert first_slurm_host(nodelist) == first


def test_bad_values_are_named():
    with pytest.raises(DistributedError, match="WORLD_SIZE"):
        detect({"RANK": "0", "WORLD_SIZE": "two"})
    import torch

    assert pick_backend("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(DistributedError, match="nccl needs CUDA"):
        pick_backend("nccl", torch.device("cpu"))


def test_cpu_peak_estimate_scales_with_threads_and_config_wins():
    import torch

    from scaling.train.throughput import cpu_peak_flops, peak_flops

    one = cpu_peak_flops(1)
    assert 1e9 < one < 1e12  # one core: a few to a few hundred GFLOP/s
    assert cpu_peak_flops(4) == pytest.approx(4 * one)
    assert peak_flops(5e12, torch.device("cpu"), "a100-40gb") == (5e12, "train.peak_flops")
    assert peak_flops(None, torch.device("cpu"), "a100-40gb")[1].startswith("CPU estimate")
