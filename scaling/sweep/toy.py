"""Toy objectives for ``base: {function: ...}`` sweeps: demos, tests and the sweep benchmark.

They exercise the storage, worker and MLflow machinery without training anything. Each takes
the trial's parameters and a ``TrialContext`` and returns ``{metric: value}``.
"""

from __future__ import annotations

import math
import time
from typing import Any


def quadratic(params: dict[str, Any], ctx: Any) -> dict[str, float]:
    """``loss = (x - 2)^2 + (y + 1)^2`` reported over ``steps`` steps (it shrinks towards the end).

    Optional parameters: ``steps`` (default 3), ``sleep_s`` per step (default 0), ``cost``.
    """
    x, y = float(params.get("x", 0.0)), float(params.get("y", 0.0))
    steps = int(params.get("steps", 3))
    sleep_s = float(params.get("sleep_s", 0.0))
    final = (x - 2.0) ** 2 + (y + 1.0) ** 2
    for step in range(1, steps + 1):
        if ctx.should_stop():
            raise TimeoutError(f"trial {ctx.number} ran past its time limit at step {step}")
        if sleep_s:
            time.sleep(sleep_s)
        ctx.log({"loss": final + 1.0 / step - 1.0 / steps}, step)
    return {"loss": final, "cost": abs(x) + abs(y) + float(params.get("cost", 0.0))}


def slow_first(params: dict[str, Any], ctx: Any) -> dict[str, float]:
    """Like ``quadratic``, but the first attempt of trial 0 sleeps ``hang_s`` (default 30) before
    its last step, so a test can kill its worker mid-trial; the retry runs at normal speed."""
    marker = ctx.out_dir / "started"
    first = ctx.number == 0 and ctx.retry_of is None and not marker.exists()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(ctx.number))
    if first:
        deadline = time.monotonic() + float(params.get("hang_s", 30.0))
        while time.monotonic() < deadline:
            time.sleep(0.1)
    return quadratic(params, ctx)


def noisy_sine(params: dict[str, Any], ctx: Any) -> dict[str, float]:
    """A 1-D multimodal curve in ``x`` with a cost that grows with ``x`` (two objectives)."""
    x = float(params.get("x", 0.0))
    value = math.sin(3 * x) + 0.1 * x
    ctx.log({"score": value}, 1)
    return {"score": value, "cost": x * x}
