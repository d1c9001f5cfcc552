"""The weak-to-strong comparison: a ladder plus its controls, on the same budget.

Every CLIP stage that the ladder initialises from its MIM stage also runs from a random vision
tower (``random_init``, text tower as in the ladder; ``random_init_compute``: with the CLIP samples
that cost what mim_init's CLIP + MIM cost) and with both towers random (``scratch``), over several
seeds per arm, at one or more CLIP budgets, from the ladder's one upstream chain or (reseeded) one
per seed. All runs are siblings in the ladder's MLflow experiment under one parent run, tagged
``arm``, ``seed``, ``budget``, ``upstream_seed`` and ``base_stage``; the report's weak-to-strong
section gives each stage's gain with its t interval over seeds.

``plan_study`` (``scaling.study.arms``) is torch-free; ``python -m scaling.study`` runs it.
"""

from scaling.study.arms import ARMS, DEFAULT_ARMS, StudyPlan, plan_study

__all__ = ["ARMS", "DEFAULT_ARMS", "StudyPlan", "plan_study"]
