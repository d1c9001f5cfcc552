"""Run a plan: skip finished stages, open MLflow runs, submit one job per stage, follow them.

* ``local`` / ``debug``: the LocalExecutor has no job dependencies, so a stage is submitted once its
  upstream finished; ``parallel`` local stages whose upstream is done run at once (1 by default:
  one after another; a study's control arms are independent and fill the cores).
* ``slurm``: every stage is submitted up front with ``afterok`` dependencies on its upstream jobs;
  when a stage fails its dependants are cancelled (the cluster's ``kill_invalid_depend`` does the
  same; doing it here covers clusters without it).

The MLflow runs (a parent per invocation, a child per stage, kept across invocations) are
``ladder/runs.py``'s; what differs per executor (dependencies, polling, results) is
``launch/follow.py``'s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

import scaling.ladder.runs as runs
import scaling.launch.follow as follow
from scaling import tracking
from scaling.ladder.plan import Plan, PlannedStage
from scaling.launch.executors import LaunchError, job_id_of, make_executor
from scaling.launch.job import StageJob
from scaling.stage_state import read_progress, stage_run_id, write_state


@dataclass
class Outcome:
    states: dict[str, str] = field(default_factory=dict)  # stage -> finished | failed | cancelled | skipped...
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    job_ids: dict[str, str] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    uri: str | None = None

    @property
    def ok(self) -> bool:
        return all(s in ("finished", "skipped") for s in self.states.values())

    @property
    def stopped(self) -> bool:
        """Not finished, but nothing failed: a stage was stopped by a signal and its dependants wait."""
        return not self.ok and all(s in ("finished", "skipped", "preempted", "waiting") for s in self.states.values())


class Dispatcher:
    def __init__(self, plan: Plan, executor: str, tracking_uri: str | None = None,
                 jobs_dir: str | Path | None = None, stage_fn: Callable[..., Any] | None = None,
                 poll_s: float = 2.0, out: TextIO | None = None, argv: list[str] | None = None,
                 parallel: int = 1) -> None:
        self.plan = plan
        self.parallel = max(1, int(parallel)) if executor == "local" else 1
        self.executor = executor
        self.tracking_uri = tracking_uri
        self.jobs_dir = Path(jobs_dir) if jobs_dir else plan.runs_dir / plan.experiment / "jobs"
        self.stage_fn = stage_fn
        self.poll_s = poll_s
        self.out = out or sys.stdout
        self.argv = argv or []
        self.outcome = Outcome()
        self.track = True  # False: the store was down at start; stages run untracked (spooled)
        self._shown: dict[str, tuple[str, int]] = {}
        # A live bar per running stage on a terminal; plain lines (every 10 %) otherwise.
        self._bars: dict[str, Any] | None = {} if out is None and sys.stderr.isatty() else None

    def say(self, text: str) -> None:
        if self._bars:
            tqdm.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def _bar(self, stage: PlannedStage, seen: float | None, state: str, job_id: str) -> None:
        assert self._bars is not None
        bar = self._bars.get(stage.name)
        if bar is None:
            bar = self._bars[stage.name] = tqdm(total=stage.samples, desc=stage.name, unit="sample",
                                                file=sys.stderr, dynamic_ncols=True)
        bar.n = int(seen or 0)
        bar.set_postfix_str(f"{state}, job {job_id}", refresh=True)

    def _close_bar(self, name: str) -> None:
        if self._bars and name in self._bars:
            self._bars.pop(name).close()

    # -- tracking -------------------------------------------------------------------------------

    def _open_runs(self, todo: list[PlannedStage], untracked: list[PlannedStage]) -> None:
        """The parent run now; a stage's own run when its job is submitted (``_stage_run``), so that
        on the local executor its MLflow start time and duration are its job's, not the ladder's."""
        uri = self.outcome.uri = tracking.resolve_uri(self.tracking_uri or self.plan.stages[0].cfg.tracking.uri)
        parent = self.outcome.parent_run_id = runs.open_parent_run(uri, self.plan, self.executor, self.argv, self.say)
        # upstream first: the runs opened next link to theirs
        runs.record_untracked(uri, self.plan, parent, untracked, self.outcome.run_ids, self.say)
        for stage in todo:
            write_state(stage.out_dir, "planned", stage=stage.name, fingerprint=stage.fingerprint,
                        proxy=self.plan.proxy, parent_run_id=parent, error=None)

    def _stage_run(self, stage: PlannedStage) -> str | None:
        """The stage's run, opened (or its earlier one found again) the first time it is asked for."""
        if self.track and self.outcome.parent_run_id and stage.name not in self.outcome.run_ids:
            runs.open_stage_runs(self.outcome.uri, self.plan, self.outcome.parent_run_id, [stage],
                                 self.outcome.run_ids)
        return self.outcome.run_ids.get(stage.name)

    def _end_run(self, name: str, status: str, record: bool = True) -> None:
        """End the stage's run as ``status``; with ``record``, a stage that never started gets a run
        that says so (a cancelled stage is in the runs table, KILLED, not missing)."""
        run_id = self._stage_run(self.plan.stage(name)) if record else self.outcome.run_ids.get(name)
        runs.end_run(self.outcome.uri, run_id, status, self.say)

    # -- jobs -----------------------------------------------------------------------------------

    def _submit(self, stage: PlannedStage, depends: list[str]) -> Any:
        executor = make_executor(self.executor, self.jobs_dir, stage.cfg.resources,
                                 name=f"{self.plan.experiment}:{stage.name}")
        follow.depend_on(executor, self.executor, depends)
        self._stage_run(stage)  # its tracking section set before the job is pickled
        try:
            job = executor.submit(StageJob(stage.cfg, stage_fn=self.stage_fn))
        except Exception as exc:  # sbatch refused (partition, account, limits...): say what it said
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise LaunchError(f"submitting {stage.name} failed: {lines[-1] if lines else type(exc).__name__}") from None
        job_id = job_id_of(job)
        self.outcome.job_ids[stage.name] = job_id
        self.outcome.submitted.append(stage.name)
        write_state(stage.out_dir, "submitted", job_id=job_id, submitted=time.time(), untracked=not self.track)
        after = f" (afterok {', '.join(depends)})" if depends else ""
        self.say(f"[{stage.name}] submitted: {self.executor} job {job_id}{after}")
        self._shown[stage.name] = ("submitted", -1)  # the progress lines need not say it again
        return job

    def _progress(self, stage: PlannedStage, job: Any) -> None:
        progress = read_progress(stage.out_dir)
        seen = (progress.get("metrics") or {}).get("train/samples_seen")
        state = stage.state().get("state", "submitted")
        if self._bars is not None:
            self._bar(stage, seen, state, job_id_of(job))
            return
        total = stage.samples
        pct = int(100 * seen / total) if seen is not None and total else -1
        bucket = (state, pct // 10)
        if self._shown.get(stage.name) == bucket:
            return
        self._shown[stage.name] = bucket
        text = f"{int(seen)}/{total} samples ({pct}%)" if pct >= 0 else ""
        self.say(f"[{stage.name}] {state} job {job_id_of(job)} {text}".rstrip())

    def _collect(self, stage: PlannedStage, job: Any) -> str:
        try:
            result = follow.job_result(self.executor, job)
        except Exception as exc:
            message = str(exc).strip().splitlines()
            why = next((line for line in reversed(message) if line.strip()), type(exc).__name__)
            state = stage.state()
            if state.get("state") == "preempted":  # stopped by TERM/INT with a checkpoint: not a failure
                self._end_run(stage.name, "KILLED")
                self.say(f"[{stage.name}] stopped (preempted) at {state.get('samples_seen')} samples, checkpoint "
                         f"{state.get('checkpoint')}; run the same command again to resume")
                return "preempted"
            # The job's own record wins: a stage that raised says "failed" in its state file.
            cancelled = state.get("state") == "cancelled" or (
                state.get("state") != "failed" and follow.scheduler_state(self.executor, job).startswith("CANCELLED"))
            if cancelled:
                write_state(stage.out_dir, "cancelled")
                self._end_run(stage.name, "KILLED")
                self.say(f"[{stage.name}] cancelled (job {job_id_of(job)})")
                return "cancelled"
            write_state(stage.out_dir, "failed", error=state.get("error") or why[:500])
            self._end_run(stage.name, "FAILED")
            self.say(f"[{stage.name}] FAILED (job {job_id_of(job)}): {state.get('error') or why}")
            return "failed"
        self.outcome.results[stage.name] = result
        status = result.get("status", "failed") if isinstance(result, dict) else "failed"
        if status != "finished":
            self.say(f"[{stage.name}] stopped ({status}) at {result.get('samples_seen')} samples; "
                     "run the same command again to resume")
            return status
        self.say(f"[{stage.name}] finished: {result.get('samples_seen')} samples, "
                 f"checkpoint {result.get('checkpoint')}")
        return "finished"

    def _cancel_downstream(self, name: str, jobs: dict[str, Any], stopped: bool = False) -> None:
        """Cancel what depends on ``name``; a ``stopped`` upstream leaves them planned, to run next time."""
        for other in self.plan.downstream(name):
            if self.outcome.states.get(other) in ("finished", "skipped", "failed", "cancelled", "waiting"):
                continue
            job = jobs.pop(other, None)
            self._close_bar(other)
            if job is not None:
                job.cancel(check=False)
            stage = self.plan.stage(other)
            self._end_run(other, "KILLED", record=not stopped)  # a waiting stage opens its run when it runs
            if stopped:
                write_state(stage.out_dir, "planned")
                self.outcome.states[other] = "waiting"
                self.say(f"[{other}] not started: upstream {name} stopped; the same command runs it next time")
                continue
            write_state(stage.out_dir, "cancelled", error=f"upstream {name} did not finish")
            self.outcome.states[other] = "cancelled"
            self.say(f"[{other}] cancelled: upstream {name} did not finish")

    def _wait(self, jobs: dict[str, Any], until_below: int = 1) -> None:
        """Follow ``jobs`` until fewer than ``until_below`` are left running."""
        while len(jobs) >= until_below:
            for name, job in list(jobs.items()):
                if name not in jobs:
                    continue
                stage = self.plan.stage(name)
                if follow.is_done(self.executor, job):
                    del jobs[name]
                    self._close_bar(name)
                    state = self._collect(stage, job)
                    self.outcome.states[name] = state
                    if state != "finished":
                        self._cancel_downstream(name, jobs, stopped=state == "preempted")
                else:
                    self._progress(stage, job)
            if len(jobs) >= until_below:
                time.sleep(self.poll_s)

    # -- entry ----------------------------------------------------------------------------------

    def run(self) -> Outcome:
        plan = self.plan
        todo = []
        for stage in plan.stages:
            if stage.state().get("state") == "finished":
                self.outcome.states[stage.name] = "skipped"
                self.outcome.run_ids[stage.name] = stage_run_id(stage.out_dir) or ""
                self.say(f"[{stage.name}] finished earlier (fingerprint {stage.fingerprint}): skipped")
            else:
                todo.append(stage)
        # finished while the store was down: recorded now that it answers
        untracked = [s for s in plan.stages if self.outcome.states.get(s.name) == "skipped"
                     and s.state().get("untracked")] if self.track else []
        if not todo:
            self.say("nothing to run: every stage of this plan finished earlier (same fingerprints)")
            if untracked:
                self._open_runs([], untracked)
                self._finish("FINISHED")
            return self.outcome
        if self.track:
            self._open_runs(todo, untracked)
        jobs: dict[str, Any] = {}
        try:
            if follow.submits_ahead(self.executor):
                for stage in todo:
                    deps = [self.outcome.job_ids[d] for d in stage.depends_on if d in self.outcome.job_ids]
                    jobs[stage.name] = self._submit(stage, deps)
                self._wait(jobs)
            else:
                pending = list(todo)
                while pending:
                    pending = [s for s in pending if s.name not in self.outcome.states]  # cancelled upstream
                    ready = [s for s in pending if all(d in self.outcome.states for d in s.depends_on)]
                    if ready and len(jobs) < self.parallel:
                        stage = ready[0]
                        pending.remove(stage)
                        jobs[stage.name] = self._submit(stage, [])
                        continue
                    if not jobs:
                        break  # nothing running and nothing ready: only stages of failed upstreams are left
                    self._wait(jobs, until_below=len(jobs))  # until one of them ends
                self._wait(jobs)
        except LaunchError:
            for job in jobs.values():
                job.cancel(check=False)
            for stage in todo:
                if stage.name not in self.outcome.states:
                    write_state(stage.out_dir, "cancelled", error="submission failed")
                    self._end_run(stage.name, "KILLED")
            self._finish("FAILED")
            raise
        except KeyboardInterrupt:
            kept = follow.keeps_running_when_interrupted(self.executor)
            self.say("interrupted: " + ("SLURM jobs keep running; follow them with `python -m scaling.ladder status`"
                                        if kept else "stopping the running stage"))
            if not kept:
                for job in jobs.values():
                    job.cancel(check=False)
            self._finish("KILLED")
            raise
        self._finish("FINISHED" if self.outcome.ok else "KILLED" if self.outcome.stopped else "FAILED")
        return self.outcome

    def _finish(self, status: str) -> None:
        runs.end_parent_run(self.outcome.uri, self.outcome.parent_run_id, status, self.say)
