"""Training stages: EVA MIM and EVA-CLIP on 1 or N processes, plain torch or DeepSpeed.

``run_stage(cfg, logger=None, stop_requested=None, wait=False) -> StageResult`` is the entry point; the
heavy modules load on first use so that ``import scaling.train`` stays cheap.
"""

from scaling.train.result import StageResult

__all__ = ["StageResult", "run_stage"]


def run_stage(cfg, logger=None, stop_requested=None, wait=False) -> StageResult:
    # torch on use: `import scaling.train` stays cheap
    from scaling.train.stage import run_stage as _run_stage

    return _run_stage(cfg, logger=logger, stop_requested=stop_requested, wait=wait)
