"""A loss or gradient norm that is no longer a finite number stops the stage as failed.

Checked after every optimiser step, on every rank (OR over ranks: one rank's NaN stops all of
them at the same step), before the step's metrics or checkpoint are written, so the newest
checkpoint on disk is from before the divergence. The gradient norm is checked too (plain torch
engine): a NaN gradient has already spoiled the weights even when this step's loss was finite.
An fp16 loss scaler skips overflowing steps itself (an infinite norm is its business), and
DeepSpeed does not always report a norm: there only the loss is checked."""

from __future__ import annotations

import math
from pathlib import Path

from scaling.train import checkpoint as ckpt
from scaling.train import distributed as dist_utils
from scaling.train.errors import StageError


class DivergedError(StageError):
    """The loss or the gradient norm became NaN or infinite; the message names the step."""


def check_finite(loss: float, grad_norm: float, step: int, out_dir: Path, check_norm: bool = True) -> None:
    """Raise ``DivergedError`` when ``loss`` (or ``grad_norm``) is NaN/inf on any rank."""
    bad = not math.isfinite(loss) or (check_norm and not math.isfinite(grad_norm))
    if not dist_utils.any_true(bad):
        return
    last = ckpt.latest_checkpoint(out_dir)
    where = (f"the last good checkpoint is {last} (step {ckpt.read_manifest(last)['step']})" if last is not None
             else "there is no checkpoint yet (the stage restarts from step 0)")
    raise DivergedError(
        f"training diverged at step {step}: train/loss={loss:.6g}, grad norm={grad_norm:.6g}; the stage "
        f"stops as failed and writes no checkpoint of this step; {where}. Lower optim.lr (or raise "
        "optim.warmup_samples or optim.grad_clip) and run again: it resumes from the newest checkpoint")
