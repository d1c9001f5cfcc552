"""A sweep's Optuna sampler and pruner, and its search space as Optuna distributions."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from scaling.sweep.spec import Param, SweepError, SweepSpec


def distributions(params: list[Param]) -> dict[str, BaseDistribution]:
    """Optuna distributions; a fixed value is a one-choice categorical (so it shows as a param)."""
    out: dict[str, BaseDistribution] = {}
    for p in params:
        if p.type == "float":
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        elif p.type == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices))
        else:
            out[p.name] = CategoricalDistribution([p.value])
    return out


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` does not call ``study.stop()``: workers here use
    ask/tell and stop on the trial count, and ``stop()`` outside ``optimize`` raises."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        return None

    def _get_unvisited_grid_ids(self, study: optuna.Study) -> list[int]:
        # Optuna counts a FAILed grid point as visited, so it would never run again; here only
        # COMPLETE/PRUNED points are done, and queued retries count as in flight.
        done, in_flight = set(), set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            grid_id = t.system_attrs.get("grid_id")
            if grid_id is None or not self._same_search_space(t.system_attrs.get("search_space", {})):
                continue
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done.add(grid_id)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                in_flight.add(grid_id)
        todo = set(range(self._n_min_trials)) - done
        return sorted(todo - in_flight) or sorted(todo)


def make_sampler(spec: SweepSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    cfg = dict(spec.sampler)
    name = cfg.pop("name", "tpe")
    seed = cfg.pop("seed", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            if name == "grid":
                # The seed shuffles the grid, i.e. maps grid ids to points: it must be the same in
                # every worker, or two workers run the same point under different ids.
                grid = {p.name: list(p.choices) if p.type == "categorical" else [p.value] for p in spec.params}
                return _GridSampler(grid, seed=int(seed or 0))
            # Workers must not draw the same random sequence: offset the seed per worker.
            seed = None if seed is None else int(seed) + 7919 * worker
            if name == "random":
                return optuna.samplers.RandomSampler(seed=seed, **cfg)
            if name == "cmaes":
                if importlib.util.find_spec("cmaes") is None:
                    raise SweepError(f"{spec.path}: sampler 'cmaes' needs the cmaes package: pip install cmaes")
                return optuna.samplers.CmaEsSampler(seed=seed, **cfg)
            return optuna.samplers.TPESampler(seed=seed, **cfg)
        except TypeError as exc:
            raise SweepError(f"{spec.path}: sampler options {cfg}: {exc}") from None


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    cfg = dict(spec.pruner)
    name = cfg.pop("name", "none")
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**cfg)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(**cfg)
    except TypeError as exc:
        raise SweepError(f"{spec.path}: pruner options {cfg}: {exc}") from None
    return optuna.pruners.NopPruner()
