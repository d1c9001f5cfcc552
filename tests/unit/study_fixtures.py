"""A small real MLflow store shaped like ``python -m scaling.study`` records (test data).

The law: the ladder's stages clip@B16 ... clip@8B, 3 seeds each, whose held-out retrieval loss
follows ``LOSS0 * (C / 1e11) ** ALPHA`` with a per-seed spread; clip@E14 is made worse than
clip@L14 (not monotone). The arms: clip@18B at budgets 2000, 4000 (its own) and 8000 in arms
mim_init, random_init and random_init_compute over 3 seeds, once from the ladder's one upstream
chain (shared) and once with each seed its own (reseeded). The top-1 gain over random_init is
``GAIN[budget]``; over the compute-matched control it is 0; the losses' gains are positive.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = "w2s-test"
LAW = {"B16": 2e11, "L14": 5e11, "E14": 1.2e12, "8B": 3e12, "18B": 7e12}  # CLIP training FLOPs
ALPHA, LOSS0 = -0.12, 4.0
NOT_MONOTONE = "E14"  # made worse than the stage below
SEEDS = (0, 1, 2)
OWN_BUDGET = 4000
GAIN = {2000: 0.08, 4000: 0.05, 8000: 0.0}  # top-1 gain of mim_init over random_init
MIM_FLOPS = 4e12  # what the compute-matched control gets on top
INHERITED = 2.0  # a law stage's upstream FLOPs, in units of its own


def _loss(rung: str) -> float:
    value = LOSS0 * (LAW[rung] / 1e11) ** ALPHA
    return value * 1.25 if rung == NOT_MONOTONE else value


def _run(mlc, exp_id: str, parent: str, name: str, rung: str, tags: dict[str, str], metrics: dict[str, float],
         flops: float, samples: float) -> None:
    from mlflow.entities import Metric, Param

    tags = {"mlflow.parentRunId": parent, "mlflow.runName": name, "stage": name, "rung": rung, "kind": "clip",
            "proxy": "true", **tags}
    rid = mlc.create_run(exp_id, tags=tags, run_name=name).info.run_id
    params = [Param(k, v) for k, v in {"stage.kind": "clip", "stage.rung": rung, "stage.proxy": "True",
                                       "train.samples": str(int(samples))}.items()]  # fmt: skip
    values = {"train/flops": flops, "train/samples_seen": samples, **metrics}
    mlc.log_batch(rid, metrics=[Metric(k, float(v), 0, 1) for k, v in values.items()], params=params)
    mlc.set_terminated(rid, "FINISHED")


def build_study(uri: str, root: Path, experiment: str = EXPERIMENT) -> str:
    """Write the study into the store at ``uri``; returns the parent run's id."""
    from mlflow.tracking import MlflowClient

    mlc = MlflowClient(tracking_uri=uri)
    exp_id = mlc.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    parent = mlc.create_run(exp_id, run_name="study", tags={"role": "study"}).info.run_id
    rng = np.random.default_rng(0)
    seed_effect = {s: rng.normal(0, 0.01) for s in SEEDS}
    for rung in ("B16", "L14", "E14", "8B"):
        for seed in SEEDS:
            name = f"clip@{rung}" if seed == 0 else f"clip@{rung}.mim_init.s{seed}"
            tags = {"arm": "mim_init", "seed": str(seed), "base_stage": f"clip@{rung}", "budget": "3000",
                    "upstream_seed": str(seed), "inherited_flops": f"{INHERITED * LAW[rung]:g}"}  # fmt: skip
            loss = _loss(rung) * (1 + 0.02 * rng.normal())
            _run(mlc, exp_id, parent, name, rung, tags,
                 {"eval/synth_ret/loss": loss, "eval/synth_cls/loss": 0.5 * loss, "eval/synth_cls/top1": 0.1},
                 LAW[rung], 3000)  # fmt: skip
    per_sample = LAW["18B"] / OWN_BUDGET
    for upstream in ("shared", "reseeded"):
        for budget, gain in GAIN.items():
            for seed in SEEDS:
                chain = str(seed) if upstream == "reseeded" else "0"
                for arm in ("mim_init", "random_init", "random_init_compute"):
                    if upstream == "shared" and seed == 0:
                        continue  # the same runs as the reseeded study's seed 0
                    base = 0.15 + seed_effect[seed] + (0.02 * seed_effect[seed] if upstream == "reseeded" else 0)
                    # the compute-matched control catches up: no gain over it
                    top1 = base + (gain if arm != "random_init" else 0.0) + rng.normal(0, 0.003)
                    loss_gain = 0.5 if arm != "mim_init" else 0.0
                    own = "clip@18B" if arm == "mim_init" and budget == OWN_BUDGET and seed == 0 else \
                        f"clip@18B.{arm}.n{budget}.s{seed}.{upstream}"
                    samples = budget + (MIM_FLOPS / per_sample if arm == "random_init_compute" else 0)
                    tags = {"arm": arm, "seed": str(seed), "base_stage": "clip@18B", "budget": str(budget),
                            "upstream_seed": chain, "inherited_flops": f"{MIM_FLOPS if arm == 'mim_init' else 0:g}"}
                    loss = _loss("18B") + loss_gain + rng.normal(0, 0.01)
                    _run(mlc, exp_id, parent, own, "18B", tags,
                         {"eval/synth_cls/top1": top1, "eval/synth_ret/loss": loss,
                          "eval/synth_cls/loss": 0.5 * loss}, per_sample * samples, samples)  # fmt: skip
    mlc.set_terminated(parent, "FINISHED")
    return parent
