"""When a training loop logs, evaluates and checkpoints: by optimiser step (``train.log_every``,
``train.ckpt_every``) and by samples seen (``eval.every_samples`` or ``eval.points``); the last
step's evaluation and checkpoint are the stage's final ones, taken after the loop."""

from __future__ import annotations

from omegaconf import DictConfig

from scaling.eval.cadence import eval_every_samples


class Cadence:
    def __init__(self, cfg: DictConfig, total_steps: int) -> None:
        self.log_every = int(cfg.train.log_every)
        self.ckpt_every = int(cfg.train.ckpt_every or 0)
        self.eval_every = eval_every_samples(cfg)
        self.total_steps = total_steps

    def log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps

    def evaluate(self, step: int, samples_seen: int, batch: int) -> bool:
        """The step that took ``samples_seen`` past a multiple of the evaluation cadence."""
        every = self.eval_every
        crossed = bool(every) and samples_seen // every > (samples_seen - batch) // every
        return crossed and step < self.total_steps

    def checkpoint(self, step: int) -> bool:
        return bool(self.ckpt_every) and step % self.ckpt_every == 0 and step < self.total_steps
