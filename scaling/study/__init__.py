"""The weak-to-strong comparison: a ladder plus its controls, on the same budget.

Every CLIP stage that the ladder initialises from its MIM stage also runs from a random vision
tower (``random_init``, text tower as in the ladder) and with both towers random (``scratch``),
at the same CLIP samples, over several seeds per arm. All runs are siblings in the ladder's MLflow
experiment under one parent run, tagged ``arm``, ``seed`` and ``base_stage``; the report's
weak-to-strong section gives each stage's gain with its bootstrap interval over seeds.

``plan_study`` (``scaling.study.arms``) is torch-free; ``python -m scaling.study`` runs it.
"""

from scaling.study.arms import ARMS, StudyPlan, plan_study

__all__ = ["ARMS", "StudyPlan", "plan_study"]
