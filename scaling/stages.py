"""What a stage is called and what it logs: stage names, override scopes and metric names,
defined once for the loaders, the planners, the trainer and the evaluator (the stage kinds
themselves are ``scaling.kinds``).

Torch-free: a sweep file's objectives are checked against ``scaling.kinds.logged_metrics`` before
any worker starts, so the names must be known without building a model.
"""

from __future__ import annotations

from pathlib import Path

ALL = "all"  # ladder layer target: every stage
LADDER_SCOPE = "ladder"  # command-line scope of the ladder file's own keys: ladder.teacher_checkpoint=PATH


def stage_name(kind: str, rung: str) -> str:
    """``clip@18B``: how plans, tags and scoped overrides name one stage."""
    return f"{kind}@{rung}"


# --- metric names -------------------------------------------------------------------------
# Logged by every stage's training loop (``train.loop.TrainingLoop._log_train``) every train.log_every steps.
TRAIN_METRICS: tuple[str, ...] = (
    "train/loss", "train/grad_norm", "train/samples_seen", "train/samples_per_s", "train/flops_per_s",
    "train/mfu", "train/step", "train/phase", "train/skipped_samples",
)  # fmt: skip
# Each stage kind adds ``train/lr/<group>`` per optimiser tower and its own metrics
# (``scaling.kinds.StageKind.lr_groups``, ``train_metrics``, ``eval_metrics``).
# Evaluation (``eval.runner.StageEvaluator``): a MIM stage's held-out loss; a CLIP's per-set metrics.
MIM_EVAL_METRIC = "eval/mim/loss"
# ``loss``: the held-out cross-entropy (classification) and InfoNCE over the whole set (retrieval)
# at the model's own temperature, which keep falling where an accuracy sits on a plateau.
CLASSIFICATION_METRICS: tuple[str, ...] = ("top1", "top5", "chance_top1", "loss")
RETRIEVAL_LOSS = "loss"
RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)
# The arm tag of a proxy ladder's bootstrap teacher (its --from rung's CLIP, trained from scratch):
# kept off the scaling law, which is fitted on MIM-initialised stages.
BOOTSTRAP_ARM = "bootstrap"
# What a ladder's report fits against compute unless its file says ``law_metric``.
LAW_METRIC = "eval/synth_cls/top1"
# Computed by the sweep runner from a trial's resolved configs (``scaling.costs``), not logged by a stage.
COST_METRICS: tuple[str, ...] = ("cost/train_flops", "cost/params")


def retrieval_metrics(ks: tuple[int, ...] = RETRIEVAL_KS) -> tuple[str, ...]:
    """``image_r<k>`` (text -> image), ``text_r<k>`` (image -> text) and the held-out contrastive
    ``loss``; no '@' in a name: MLflow refuses it."""
    return (*(f"image_r{k}" for k in ks), *(f"text_r{k}" for k in ks), RETRIEVAL_LOSS)


WDS_PREFIX = "wds_"  # CLIP_benchmark's webdataset folders: wds_<set name>


def eval_set_name(path: str | None, synthetic: bool, kind: str) -> str:
    """Metric name of an eval set: ``synth_cls``/``synth_ret`` for the synthetic world, else its
    folder, without the ``wds_`` of CLIP_benchmark's folders (``wds_vtab-cifar10`` ->
    ``vtab-cifar10``, as CLIP_benchmark names the set ``wds/vtab/cifar10``)."""
    if synthetic:
        return "synth_cls" if kind == "classification" else "synth_ret"
    name = Path(path or "").name
    return name.removeprefix(WDS_PREFIX) or name or kind


def eval_metric(set_name: str, metric: str) -> str:
    return f"eval/{set_name}/{metric}"
