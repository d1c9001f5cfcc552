"""MLflow side of a ladder invocation: one parent run per invocation, one child run per stage.

A stage keeps its MLflow run across invocations: the run id lives in the stage's state file (and
the run carries the stage fingerprint as a tag), so a resumed stage logs into the same run. The
ladder's parent run does too when an invocation was killed outright (``kill -9``, a lost node):
its run is still RUNNING, and the next invocation of the same plan continues it.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable

from scaling import tracking
from scaling.ladder.describe import lineage_tags, stage_params
from scaling.ladder.plan import Plan, PlannedStage
from scaling.launch.artifacts import log_stage_files
from scaling.stage_state import stage_run_id, stage_tags, write_state
from scaling.train.spool import MetricSpool

Say = Callable[[str], None]


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


def orphaned_parent(uri: str, plan: Plan, say: Say) -> str | None:
    """A parent run left RUNNING by an invocation that was killed outright: the same plan's is
    continued (its id returned); another plan's, whose process is gone from this host, is ended."""
    adopted, key = None, plan_key(plan)
    for run in tracking.find_runs(uri, plan.experiment, tags={"role": "ladder"}, status="RUNNING"):
        tags, run_id = run.data.tags, run.info.run_id
        here = tags.get("host") == socket.gethostname()
        if here and _alive(tags.get("pid")):  # another invocation is running right now
            continue
        if tags.get("plan") == key and adopted is None:
            adopted = run_id
            tracking.set_tags(uri, run_id, {"pid": os.getpid(), "host": socket.gethostname()})
            say(f"continuing the ladder's MLflow run {run_id}: its invocation was cut off")
        elif here:
            tracking.end_run(uri, run_id, "KILLED")
            say(f"ended the ladder's MLflow run {run_id} (KILLED): its invocation was cut off")
    return adopted


def open_parent_run(uri: str, plan: Plan, executor: str, argv: list[str], say: Say) -> str:
    """The invocation's parent run: a cut-off invocation's of the same plan, or a new one."""
    path = " -> ".join(plan.path)
    return orphaned_parent(uri, plan, say) or tracking.start_run(
        uri, plan.experiment, f"ladder {path}",
        tags=tracking.standard_tags(ladder=plan.ladder.name, path=path, proxy=plan.proxy, executor=executor,
                                    role="ladder", plan=plan_key(plan), pid=os.getpid()),
        params={"ladder.file": str(plan.ladder.path), "ladder.path": path, "ladder.proxy": plan.proxy,
                "ladder.executor": executor, "ladder.argv": " ".join(argv)[:5000],
                "ladder.teacher_source": plan.teacher_source,
                "ladder.teacher_checkpoint": plan.teacher_checkpoint or ""},
    )


def stage_run(uri: str, plan: Plan, parent: str | None, stage: PlannedStage, ids: dict[str, str]) -> str:
    """The stage's run (its earlier one, or a new child of ``parent`` with lineage tags), into ``ids``."""
    names = {s.name for s in plan.stages}
    # the run it learns from: a MIM stage's teacher, a CLIP stage's text init
    teacher = stage.teacher or stage.init.get("text")
    links = {"teacher": ids.get(stage.teacher or ""),
             "init": ids.get(stage.init.get("vision", "")), "text init": ids.get(stage.init.get("text", ""))}
    tags = tracking.standard_tags(
        **stage_tags(stage.kind, stage.rung, stage.name),
        teacher_run_id=ids.get(teacher or ""), init_run_id=ids.get(stage.init.get("vision", "")),
        teacher_checkpoint=None if teacher in ids or teacher in names else teacher,
        teacher_rung=stage.teacher_rung, ladder=plan.ladder.name, proxy=plan.proxy, **stage.tags,
    ) | lineage_tags(uri, tracking.get_or_create_experiment(plan.experiment, uri), links,
                     {v: k for k, v in ids.items()})
    ids[stage.name] = tracking.open_stage_run(uri, plan.experiment, stage.name, stage.fingerprint,
                                              known=stage_run_id(stage.out_dir), parent_run_id=parent,
                                              tags=tags, params=stage_params(stage))
    return ids[stage.name]


def open_stage_runs(uri: str, plan: Plan, parent: str, todo: list[PlannedStage], ids: dict[str, str]) -> None:
    """Each stage's run (``stage_run``) into ``ids``, its config's ``tracking`` section and its
    state file (``planned``)."""
    for stage in todo:
        run_id = stage_run(uri, plan, parent, stage, ids)
        stage.cfg.tracking.uri, stage.cfg.tracking.run_id, stage.cfg.tracking.parent_run_id = uri, run_id, parent
        write_state(stage.out_dir, "planned", stage=stage.name, run_id=run_id, fingerprint=stage.fingerprint,
                    proxy=plan.proxy, parent_run_id=parent, error=None)


def record_untracked(uri: str, plan: Plan, parent: str, stages: list[PlannedStage], ids: dict[str, str],
                     say: Say) -> None:
    """Stages that finished while the store was down (``untracked`` in their state file): each gets
    its run now, with every metric its spool kept and its files, ended ``FINISHED``."""
    for stage in stages:
        run_id = stage_run(uri, plan, parent, stage, ids)
        stage.cfg.tracking.uri, stage.cfg.tracking.run_id = uri, run_id
        logger = tracking.MlflowLogger(uri, run_id)
        rows = MetricSpool(stage.out_dir, logger).resend()
        logger.close("FINISHED")
        if logger.pending:  # the store went away again: the flag stays, the next run tries again
            say(f"[{stage.name}] ran untracked; its metrics did not reach MLflow run {run_id} yet")
            continue
        log_stage_files(stage.cfg)
        write_state(stage.out_dir, "finished", run_id=run_id, parent_run_id=parent, untracked=False)
        say(f"[{stage.name}] ran untracked: recorded now in MLflow run {run_id} ({rows} spooled metric rows)")


def end_run(uri: str | None, run_id: str | None, status: str, say: Say) -> None:
    """Mark a stage's run ``status`` if it is still RUNNING (the stage's own outcome decides)."""
    if not run_id:
        return
    try:
        if tracking.run_status(uri, run_id) == "RUNNING":
            tracking.end_run(uri, run_id, status)
    except Exception as exc:  # tracking trouble must not hide the stage's own outcome
        say(f"warning: could not mark MLflow run {run_id} {status}: {exc}")


def end_parent_run(uri: str | None, run_id: str | None, status: str, say: Say) -> None:
    if run_id:
        try:
            tracking.end_run(uri, run_id, status)
        except Exception as exc:
            say(f"warning: could not close the ladder's MLflow run: {exc}")
