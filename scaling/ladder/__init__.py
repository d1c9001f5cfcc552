"""The weak-to-strong ladder: plan stages from a ladder file, estimate their cost, dispatch them
as submitit jobs with MLflow lineage, skip finished ones and resume the rest.

``plan_ladder`` (``scaling.ladder.plan``) is torch-free; ``Dispatcher`` (``scaling.ladder.dispatch``)
runs a plan; ``python -m scaling.ladder`` is the command line.
"""

from scaling.ladder.plan import Plan, PlannedStage, plan_ladder, rung_path
from scaling.ladder.spec import LadderSpec, load_ladder

__all__ = ["LadderSpec", "Plan", "PlannedStage", "load_ladder", "plan_ladder", "rung_path"]
