"""Run a plan: skip finished stages, open MLflow runs, submit one job per stage, follow them.

* ``local`` / ``debug``: the LocalExecutor has no job dependencies, so a stage is submitted once its
  upstream finished; ``parallel`` local stages whose upstream is done run at once (1 by default:
  one after another; a study's control arms are independent and fill the cores).
* ``slurm``: every stage is submitted up front with ``afterok`` dependencies on its upstream jobs;
  when a stage fails its dependants are cancelled (the cluster's ``kill_invalid_depend`` does the
  same; doing it here covers clusters without it).

A stage keeps its MLflow run across invocations: the run id lives in the stage's state file (and
the run carries the stage fingerprint as a tag), so a resumed stage logs into the same run. The
ladder's parent run does too when an invocation was killed outright (``kill -9``, a lost node):
its run is still RUNNING, and the next invocation of the same plan continues it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from scaling import tracking
from scaling.config import flatten
from scaling.ladder.plan import Plan, PlannedStage
from scaling.launch.executors import LaunchError, job_id_of, make_executor
from scaling.launch.job import StageJob
from scaling.stage_state import read_progress, stage_run_id, stage_tags, write_state

SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
              "BOOT_FAIL", "DEADLINE", "FINISHED", "INTERRUPTED"}


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
            bar = self._bars[stage.name] = tqdm(total=int(stage.cfg.train.samples), desc=stage.name, unit="sample",
                                                file=sys.stderr, dynamic_ncols=True)
        bar.n = int(seen or 0)
        bar.set_postfix_str(f"{state}, job {job_id}", refresh=True)

    def _close_bar(self, name: str) -> None:
        if self._bars and name in self._bars:
            self._bars.pop(name).close()

    # -- tracking -------------------------------------------------------------------------------

    def _open_runs(self, todo: list[PlannedStage]) -> None:
        plan = self.plan
        first_uri = self.tracking_uri or plan.stages[0].cfg.tracking.uri
        uri = self.outcome.uri = tracking.resolve_uri(first_uri)
        path = " -> ".join(plan.path)
        key = plan_key(plan)
        parent = self._orphaned_parent(uri, key) or tracking.start_run(
            uri, plan.experiment, f"ladder {path}",
            tags=tracking.standard_tags(ladder=plan.ladder.name, path=path, proxy=plan.proxy,
                                        executor=self.executor, role="ladder", plan=key, pid=os.getpid()),
            params={"ladder.file": str(plan.ladder.path), "ladder.path": path, "ladder.proxy": plan.proxy,
                    "ladder.executor": self.executor, "ladder.argv": " ".join(self.argv)[:5000],
                    "ladder.teacher_source": plan.teacher_source,
                    "ladder.teacher_checkpoint": plan.teacher_checkpoint or ""},
        )
        self.outcome.parent_run_id = parent
        ids = self.outcome.run_ids
        for stage in todo:
            run_id = self._reuse_run(uri, stage)
            if run_id is None:
                teacher = stage.teacher if stage.kind == "mim" else stage.init.get("text")
                params = {k: v for k, v in flatten(stage.cfg).items()
                          if k not in ("tracking.run_id", "tracking.parent_run_id")}
                run_id = tracking.start_run(
                    uri, plan.experiment, stage.name, parent_run_id=parent, params=params,
                    tags=tracking.standard_tags(
                        **stage_tags(stage.kind, stage.rung, stage.name), fingerprint=stage.fingerprint,
                        teacher_run_id=ids.get(teacher or ""), init_run_id=ids.get(stage.init.get("vision", "")),
                        teacher_checkpoint=None if teacher in ids or teacher in plan_names(plan) else teacher,
                        teacher_rung=stage.teacher_rung, ladder=plan.ladder.name, proxy=plan.proxy,
                        **stage.tags,
                    ),
                )
            ids[stage.name] = run_id
            stage.cfg.tracking.uri = uri
            stage.cfg.tracking.run_id = run_id
            stage.cfg.tracking.parent_run_id = parent
            write_state(stage.out_dir, "planned", stage=stage.name, run_id=run_id, fingerprint=stage.fingerprint,
                        proxy=plan.proxy, parent_run_id=parent, error=None)

    def _orphaned_parent(self, uri: str, key: str) -> str | None:
        """A parent run left RUNNING by an invocation that was killed outright: the same plan's is
        continued (its id returned); another plan's, whose process is gone from this host, is ended."""
        adopted = None
        for run in tracking.find_runs(uri, self.plan.experiment, tags={"role": "ladder"}, status="RUNNING"):
            tags, run_id = run.data.tags, run.info.run_id
            here = tags.get("host") == socket.gethostname()
            if here and _alive(tags.get("pid")):  # another invocation is running right now
                continue
            if tags.get("plan") == key and adopted is None:
                adopted = run_id
                tracking.set_tags(uri, run_id, {"pid": os.getpid(), "host": socket.gethostname()})
                self.say(f"continuing the ladder's MLflow run {run_id}: its invocation was cut off")
            elif here:
                tracking.end_run(uri, run_id, "KILLED")
                self.say(f"ended the ladder's MLflow run {run_id} (KILLED): its invocation was cut off")
        return adopted

    def _reuse_run(self, uri: str, stage: PlannedStage) -> str | None:
        """The stage's earlier MLflow run (same fingerprint), to resume in it."""
        known = stage_run_id(stage.out_dir)
        if known:
            try:
                tracking.run_status(uri, known)
                return str(known)
            except Exception:  # deleted run, other store: open a new one
                pass
        found = tracking.find_stage_run(uri, self.plan.experiment, stage.fingerprint)
        # A FINISHED run whose folder is gone would swallow the retrained steps as duplicates.
        return found[0] if found and found[1] != "FINISHED" else None

    def _end_run(self, name: str, status: str) -> None:
        run_id = self.outcome.run_ids.get(name)
        if not run_id:
            return

        try:
            if tracking.run_status(self.outcome.uri, run_id) == "RUNNING":
                tracking.end_run(self.outcome.uri, run_id, status)
        except Exception as exc:  # tracking trouble must not hide the stage's own outcome
            self.say(f"warning: could not mark MLflow run {run_id} {status}: {exc}")

    # -- jobs -----------------------------------------------------------------------------------

    def _submit(self, stage: PlannedStage, depends: list[str]) -> Any:
        executor = make_executor(self.executor, self.jobs_dir, stage.cfg.resources,
                                 name=f"{self.plan.experiment}:{stage.name}")
        if depends and self.executor == "slurm":
            executor.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(depends)})
        try:
            job = executor.submit(StageJob(stage.cfg, stage_fn=self.stage_fn))
        except Exception as exc:  # sbatch refused (partition, account, limits...): say what it said
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise LaunchError(f"submitting {stage.name} failed: {lines[-1] if lines else type(exc).__name__}") from None
        job_id = job_id_of(job)
        self.outcome.job_ids[stage.name] = job_id
        self.outcome.submitted.append(stage.name)
        write_state(stage.out_dir, "submitted", job_id=job_id, submitted=time.time())
        after = f" (afterok {', '.join(depends)})" if depends else ""
        self.say(f"[{stage.name}] submitted: {self.executor} job {job_id}{after}")
        self._shown[stage.name] = ("submitted", -1)  # the progress lines need not say it again
        return job

    def _is_done(self, job: Any) -> bool:
        if self.executor == "debug":
            return True
        if self.executor == "local":
            return bool(job.done())
        state = str(job.get_info(mode="force").get("State") or "").split(" ")[0]
        return state in SLURM_DONE or (job.paths.result_pickle.exists() and state not in ("RUNNING", "PENDING", "REQUEUED"))

    def _scheduler_state(self, job: Any) -> str:
        if self.executor != "slurm":
            return "CANCELLED" if getattr(job, "cancelled", False) else ""
        try:
            return str(job.get_info(mode="force").get("State") or "")
        except Exception:  # sacct trouble: the state file decides
            return ""

    def _progress(self, stage: PlannedStage, job: Any) -> None:
        progress = read_progress(stage.out_dir)
        seen = (progress.get("metrics") or {}).get("train/samples_seen")
        state = stage.state().get("state", "submitted")
        if self._bars is not None:
            self._bar(stage, seen, state, job_id_of(job))
            return
        total = int(stage.cfg.train.samples)
        pct = int(100 * seen / total) if seen is not None and total else -1
        bucket = (state, pct // 10)
        if self._shown.get(stage.name) == bucket:
            return
        self._shown[stage.name] = bucket
        text = f"{int(seen)}/{total} samples ({pct}%)" if pct >= 0 else ""
        self.say(f"[{stage.name}] {state} job {job_id_of(job)} {text}".rstrip())

    def _collect(self, stage: PlannedStage, job: Any) -> str:
        try:
            if self.executor == "debug":
                # DebugJob.result() opens pdb on an exception; exception() runs the job without it.
                error = job.exception()
                if error is not None:
                    raise error
            # A multi-task job (several nodes or processes) returns one result per task: rank 0's.
            result = job.results()[0] if getattr(job, "num_tasks", 1) > 1 else job.result()
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
                state.get("state") != "failed" and self._scheduler_state(job).startswith("CANCELLED"))
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
        self.say(f"[{stage.name}] finished: {result.get('samples_seen')} samples, checkpoint {result.get('checkpoint')}")
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
            self._end_run(other, "KILLED")
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
                if self._is_done(job):
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
        if not todo:
            self.say("nothing to run: every stage of this plan finished earlier (same fingerprints)")
            return self.outcome
        self._open_runs(todo)
        jobs: dict[str, Any] = {}
        try:
            if self.executor == "slurm":
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
            self.say("interrupted: " + ("SLURM jobs keep running; follow them with `python -m scaling.ladder status`"
                                        if self.executor == "slurm" else "stopping the running stage"))
            if self.executor != "slurm":
                for job in jobs.values():
                    job.cancel(check=False)
            self._finish("KILLED")
            raise
        self._finish("FINISHED" if self.outcome.ok else "KILLED" if self.outcome.stopped else "FAILED")
        return self.outcome

    def _finish(self, status: str) -> None:
        if self.outcome.parent_run_id:
            try:
                tracking.end_run(self.outcome.uri, self.outcome.parent_run_id, status)
            except Exception as exc:
                self.say(f"warning: could not close the ladder's MLflow run: {exc}")


def plan_names(plan: Plan) -> set[str]:
    return {s.name for s in plan.stages}


def plan_key(plan: Plan) -> str:
    """One invocation's identity: the experiment and its stages' fingerprints, in order."""
    text = " ".join([plan.experiment, *(s.fingerprint for s in plan.stages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _alive(pid: str | None) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 asks without signalling)."""
    if not str(pid or "").isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
