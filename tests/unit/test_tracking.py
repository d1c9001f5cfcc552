"""MLflow tracking on a SQLite store: run tree, params, resume without duplicate steps."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scaling import tracking
from scaling.metrics import MetricLogger
from scaling.tracking import store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Creating the schema takes seconds; every test gets a copy of one migrated database.
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    tracking.client(f"sqlite:///{db}")
    return db


@pytest.fixture
def uri(template_db: Path, tmp_path: Path) -> str:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_db, db)
    return f"sqlite:///{db}"


def steps_of(uri: str, run_id: str, key: str) -> list[int]:
    return [m.step for m in tracking.get_metric_history(uri, run_id, key)]


def test_importing_tracking_does_not_import_mlflow() -> None:
    code = "import sys, scaling.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "False"


def test_resolve_uri_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.artifact_root(None) == (tmp_path / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_uri() == "http://127.0.0.1:5000"
    assert tracking.artifact_root(None) is None
    assert tracking.resolve_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"


def test_limits_match_mlflow() -> None:
    from mlflow.utils import validation

    assert store.MAX_PARAM_VAL_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert store.MAX_TAG_VAL_LENGTH == validation.MAX_TAG_VAL_LENGTH


def test_a_new_experiment_opens_in_the_training_runs_view(uri: str) -> None:
    experiment_id = tracking.get_or_create_experiment("kind", uri)
    tags = tracking.client(uri).get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_reading_a_missing_store_does_not_create_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}"
    with pytest.raises(FileNotFoundError, match="no MLflow store at"):
        tracking.client(uri, create=False)
    assert not (tmp_path / "no").exists()


def test_run_tree_is_queryable(uri: str) -> None:
    parent = tracking.start_run(uri, "ladder", "E14->18B", tags=tracking.standard_tags())
    mim = tracking.start_run(
        uri, "ladder", "mim@18B", parent_run_id=parent,
        tags=tracking.standard_tags(rung="18B", stage="mim", fingerprint="f-mim"),
    )
    clip = tracking.start_run(
        uri, "ladder", "clip@18B", parent_run_id=parent,
        tags=tracking.standard_tags(rung="18B", stage="clip", init_run_id=mim, fingerprint="f-clip"),
    )
    tracking.end_run(uri, mim, "FINISHED")

    children = tracking.find_runs(uri, "ladder", parent_run_id=parent)
    assert {r.info.run_id for r in children} == {mim, clip}
    assert children[0].info.run_id == clip  # newest first
    assert [r.info.run_id for r in tracking.find_runs(uri, "ladder", tags={"stage": "clip"})] == [clip]
    assert tracking.get_run(uri, clip).data.tags["init_run_id"] == mim
    assert tracking.get_run(uri, clip).data.tags[tracking.PARENT_TAG] == parent
    assert [r.info.run_id for r in tracking.find_runs(uri, "ladder", status="FINISHED")] == [mim]
    assert tracking.find_stage_run(uri, "ladder", "f-mim") == (mim, "FINISHED")
    assert tracking.find_stage_run(uri, "ladder", "f-clip") == (clip, "RUNNING")
    assert tracking.find_stage_run(uri, "ladder", "nope") is None
    assert tracking.find_runs(uri, "no-such-experiment") == []
    # A rerun with the same fingerprint: the newest one is the stage's run.
    again = tracking.start_run(uri, "ladder", "mim@18B", parent_run_id=parent,
                               tags={"fingerprint": "f-mim"})
    assert tracking.find_stage_run(uri, "ladder", "f-mim") == (again, "RUNNING")
    tracking.set_tags(uri, again, {"note": "it's \"quoted\""})
    assert tracking.get_run(uri, again).data.tags["note"] == "it's \"quoted\""


def test_params_are_batched_and_truncated(uri: str) -> None:
    params = {f"group{i // 10}.key{i}": i for i in range(250)}
    params["data.captions"] = "x" * 10_000
    run = tracking.start_run(uri, "params", "stage", params=params)
    logged = tracking.get_run(uri, run).data.params
    assert len(logged) == 251
    assert logged["group3.key37"] == "37"
    assert len(logged["data.captions"]) == store.MAX_PARAM_VAL_LENGTH
    assert logged["data.captions"].endswith(store.TRUNCATION_MARKER)
    tracking.log_params(uri, run, params)  # same values again: accepted, nothing new
    with pytest.raises(ValueError, match="write-once"):
        tracking.log_params(uri, run, {"group0.key1": "changed"})


def test_report_on_an_unknown_experiment_creates_nothing(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from scaling.analysis.__main__ import main

    tracking.start_run(uri, "ladder-eva", "ladder E14 -> 18B")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    before = set(tmp_path.rglob("*"))
    assert main(["report", "--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    assert set(tmp_path.rglob("*")) == before
    assert sorted(e.name for e in tracking.client(uri).search_experiments()) == ["Default", "ladder-eva"]


def test_standard_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    tags = tracking.standard_tags(rung="E14", stage="clip", teacher_run_id=None)
    assert tags["slurm_job_id"] == "4242"
    assert tags["host"] == socket.gethostname()
    assert tags["rung"] == "E14" and "teacher_run_id" not in tags
    assert tags["git_sha"] == "unknown" or len(tags["git_sha"]) == 40
    monkeypatch.delenv("SLURM_JOB_ID")
    assert tracking.standard_tags()["slurm_job_id"] == "none"


def test_resumed_run_continues_without_duplicate_steps(uri: str) -> None:
    run = tracking.start_run(uri, "resume", "mim@B16")
    first = tracking.MlflowLogger(uri, run, flush_every_s=0.05)
    assert isinstance(first, MetricLogger)
    for step in range(50):
        first.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr/vision": 0.1}, step)
    first.close("KILLED")  # preempted after step 49; its last checkpoint was at step 39
    assert tracking.run_status(uri, run) == "KILLED"

    second = tracking.MlflowLogger(uri, run, flush_every_s=0.05)
    for step in range(40, 80):
        second.log_metrics({"train/loss": -1.0, "train/lr/vision": 0.1}, step)
    second.close()

    assert steps_of(uri, run, "train/loss") == list(range(80))
    values = {m.step: m.value for m in tracking.get_metric_history(uri, run, "train/loss")}
    assert values[45] == pytest.approx(1 / 46) and values[60] == -1.0  # first attempt's kept
    assert steps_of(uri, run, "train/lr/vision") == list(range(80))
    assert tracking.run_status(uri, run) == "FINISHED"
    assert len(tracking.find_runs(uri, "resume")) == 1


def test_duplicates_within_a_session_are_dropped(uri: str) -> None:
    run = tracking.start_run(uri, "dups", "stage")
    with tracking.MlflowLogger(uri, run, flush_every_s=0.05) as logger:
        logger.log_metrics({"a": 1.0}, 5)
        logger.log_metrics({"a": 2.0, "b": 1.0}, 5)  # a@5 again: dropped; b@5 is new
        logger.log_metrics({"a": 3.0}, 3)  # older step: dropped
        logger.log_metrics({"a": 4.0}, 6)
        logger.log_metrics({"bad": "not a number"}, 6)
    assert [(m.step, m.value) for m in tracking.get_metric_history(uri, run, "a")] == [
        (5, 1.0), (6, 4.0)]
    assert steps_of(uri, run, "b") == [5]
    assert steps_of(uri, run, "bad") == []


def test_artifacts_params_and_tags_through_the_logger(uri: str, tmp_path: Path) -> None:
    run = tracking.start_run(uri, "artifacts", "stage", params={"optim.lr": "0.1"})
    (tmp_path / "config.yaml").write_text("optim:\n  lr: 0.1\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text('{"top1": 0.5}')
    with tracking.MlflowLogger(uri, run) as logger:
        logger.log_artifact(tmp_path / "config.yaml")
        logger.log_artifact(tmp_path / "eval", "eval")
        logger.log_params({"optim.lr": "0.1", "optim.wd": "0.05"})
        logger.set_tags({"rung": "B16"})
        with pytest.raises(FileNotFoundError):
            logger.log_artifact(tmp_path / "missing.pt")
    client = tracking.client(uri)
    assert {f.path for f in client.list_artifacts(run)} >= {"config.yaml", "eval"}
    data = tracking.get_run(uri, run).data
    assert data.params == {"optim.lr": "0.1", "optim.wd": "0.05"}
    assert data.tags["rung"] == "B16"
    local = client.download_artifacts(run, "eval/results.json", str(tmp_path / "down"))
    assert '"top1": 0.5' in Path(local).read_text()


def test_a_missing_run_warns_once_and_does_not_stop_training(
    uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="scaling.tracking"):
        logger = tracking.MlflowLogger(uri, "f" * 32, flush_every_s=0.05)
        for step in range(5):
            logger.log_metrics({"train/loss": 1.0}, step)
            logger.set_tags({"rung": "B16"})
        logger.flush(timeout_s=5)
        logger.close(timeout_s=1)
    assert sum("cannot be logged to" in r.getMessage() for r in caplog.records) == 1
    assert logger.pending == 0


def test_only_global_rank_zero_logs(uri: str, tmp_path: Path) -> None:
    from scaling.launch.job import StageJob

    run = tracking.start_run(uri, "ranks", "stage")
    cfg = OmegaConf.create({"out_dir": str(tmp_path), "tracking": {"uri": uri, "run_id": run}})
    job = StageJob(cfg)
    assert job._logger(cfg, rank=1) is None
    logger = job._logger(cfg, rank=0)
    assert [type(sub) for sub in logger.loggers if isinstance(sub, tracking.MlflowLogger)] == [
        tracking.MlflowLogger]
    logger.close()


class FlakyClient:
    """A client whose metric batches fail twice: first after landing (the reply is lost), then
    before landing. The logger must neither lose nor duplicate a step. The first failure holds
    its reply until ``release`` is set, so a test can log more steps into the outage."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.failures = 0
        self.landed, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def log_batch(self, run_id: str, metrics=(), **kwargs: object) -> None:
        from mlflow.exceptions import MlflowException

        if metrics and self.failures < 2:
            self.failures += 1
            if self.failures == 1:
                self.real.log_batch(run_id, metrics=metrics, **kwargs)
                self.landed.set()
                self.release.wait(30)
            raise MlflowException("Connection reset by peer")
        self.real.log_batch(run_id, metrics=metrics, **kwargs)


def test_lost_reply_is_not_resent(uri: str, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    run = tracking.start_run(uri, "flaky", "stage")
    flaky = FlakyClient(tracking.client(uri))
    monkeypatch.setattr(store, "client", lambda u=None: flaky)
    logger = tracking.MlflowLogger(uri, run, flush_every_s=0.05)
    with caplog.at_level(logging.WARNING, logger="scaling.tracking"):
        for step in range(10):
            logger.log_metrics({"train/loss": float(step)}, step)
        # Events, not a clock: under load no fixed window sees the first batch go out, and steps
        # 10.. must be buffered before its failure returns for the second failure to carry them.
        assert flaky.landed.wait(30), "the first batch was never sent"
        for step in range(10, 30):
            logger.log_metrics({"train/loss": float(step)}, step)
        flaky.release.set()
        logger.close(timeout_s=30)
    assert flaky.failures == 2
    assert steps_of(uri, run, "train/loss") == list(range(30))
    assert sum("unreachable; buffering" in r.message for r in caplog.records) == 1
    assert any("reachable again" in r.message for r in caplog.records)


class DownClient:
    """A store that is down until ``up`` is set: every call fails as a dead server's would."""

    def __init__(self, real: object) -> None:
        self.real, self.up = real, False

    def __getattr__(self, name: str) -> object:
        from mlflow.exceptions import MlflowException

        if self.up:
            return getattr(self.real, name)

        def fail(*args: object, **kwargs: object) -> None:
            raise MlflowException("Connection refused")

        return fail


def test_metrics_logged_during_an_outage_arrive_when_the_store_is_back(
    uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = tracking.start_run(uri, "outage", "stage")
    down = DownClient(tracking.client(uri))
    monkeypatch.setattr(store, "client", lambda u=None, **kw: down)
    with caplog.at_level(logging.WARNING, logger="scaling.tracking"):
        logger = tracking.MlflowLogger(uri, run, flush_every_s=0.05, max_backoff_s=0.2)
        for step in range(10):
            logger.log_metrics({"train/loss": float(step)}, step)
        assert logger.flush(timeout_s=0.5) is False and logger.pending == 10
        down.up = True
        for step in range(10, 15):
            logger.log_metrics({"train/loss": float(step)}, step)
        assert logger.flush(timeout_s=10)
        logger.close()
    assert steps_of(uri, run, "train/loss") == list(range(15))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable; buffering" in m for m in messages) == 1
    assert any("reachable again" in m for m in messages)


@pytest.mark.parametrize("user", ["", "alice:S3cretPW@"])  # a password shows as *** in every warning
def test_unreachable_server_keeps_training_with_a_bounded_buffer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, user: str
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    uri, shown = f"http://{user}127.0.0.1:{port}", f"http://{user.replace('S3cretPW', '***')}127.0.0.1:{port}"
    with caplog.at_level(logging.WARNING, logger="scaling.tracking"):
        logger = tracking.MlflowLogger(uri, "0" * 32, flush_every_s=0.05, max_buffer=10)
        for step in range(15):
            logger.log_metrics({"train/loss": 1.0}, step)
        assert logger.pending == 10 and logger.dropped == 5
        logger.close("FAILED", timeout_s=1.0)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"MLflow at {shown} unreachable; buffering" in m for m in messages)
    assert any("buffer full" in m and f"bring {shown} back" in m for m in messages)
    assert any(f"MLflow at {shown} unreachable: 10 metrics" in m and "could not be delivered" in m for m in messages)
    assert not [m for m in messages if "S3cretPW" in m]


def test_exit_without_close_delivers_and_marks_the_run_killed(uri: str) -> None:
    run = tracking.start_run(uri, "exit", "stage")
    code = textwrap.dedent(f"""
        from scaling import tracking
        logger = tracking.MlflowLogger({uri!r}, {run!r}, flush_every_s=60)
        for step in range(20):
            logger.log_metrics({{"train/loss": 1.0}}, step)
    """)  # the process ends (e.g. preempted) without close(); nothing flushed yet
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
    assert steps_of(uri, run, "train/loss") == list(range(20))
    assert tracking.run_status(uri, run) == "KILLED"


class LateLookup:
    """A client whose first experiment lookup misses: another process creates it meanwhile."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.lookups = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def get_experiment_by_name(self, name: str) -> object:
        self.lookups += 1
        return None if self.lookups == 1 else self.real.get_experiment_by_name(name)


def test_experiment_created_by_someone_else_meanwhile(uri: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = tracking.client(uri)
    created = real.create_experiment("shared")
    late = LateLookup(real)
    monkeypatch.setattr(store, "client", lambda u=None: late)
    assert tracking.get_or_create_experiment("shared", uri) == created
    assert late.lookups == 2
    real.delete_experiment(created)
    assert tracking.get_or_create_experiment("shared", uri) == created  # restored from the bin
    assert real.get_experiment(created).lifecycle_stage == "active"


def _wait_for_system_metrics(cfg, logger=None, stop_requested=None):
    """A stage stand-in that ends once MLflow's monitor has logged a sample to its run."""
    from scaling.train.result import StageResult

    deadline = time.monotonic() + 120  # a bound for a broken monitor, not a timing assertion
    uri, run_id = cfg.tracking.uri, cfg.tracking.run_id
    while not any(k.startswith("system/") for k in tracking.get_run(uri, run_id).data.metrics):
        assert time.monotonic() < deadline, "no system metric was logged"
        time.sleep(0.1)
    return StageResult("finished", 1, 1, {}, str(Path(cfg.out_dir) / "final"), cfg.out_dir)


def test_a_stage_run_gets_system_metrics_keyed_by_its_node(uri: str, tmp_path: Path) -> None:
    from scaling.launch.job import StageJob

    run = tracking.start_run(uri, "system", "stage")
    cfg = {"stage": {"name": "clip@B16", "kind": "clip"}, "out_dir": str(tmp_path / "stage"),
           "tracking": {"uri": uri, "run_id": run, "system_metrics_s": 0.2}}
    assert StageJob(cfg, stage_fn=_wait_for_system_metrics)()["status"] == "finished"
    metrics = tracking.get_run(uri, run).data.metrics
    node = socket.gethostname()
    assert f"system/{node}/cpu_utilization_percentage" in metrics
    assert f"system/{node}/system_memory_usage_percentage" in metrics
    assert tracking.run_status(uri, run) == "FINISHED"


def test_open_stage_run_continues_the_stages_run_and_never_a_finished_one(uri: str) -> None:
    first = tracking.open_stage_run(uri, "exp", "clip@B16", "fp1", tags={"kind": "clip"}, params={"a": 1})
    run = tracking.get_run(uri, first)
    assert run.data.tags["fingerprint"] == "fp1" and run.data.tags["kind"] == "clip" and run.data.params["a"] == "1"
    # the id a state file recorded, then the unfinished run with the same fingerprint
    assert tracking.open_stage_run(uri, "exp", "clip@B16", "fp1", known=first) == first
    assert tracking.open_stage_run(uri, "exp", "clip@B16", "fp1", known="no-such-run") == first
    # a FINISHED run (its folder gone) would take the retrained steps as duplicates: a new run
    tracking.end_run(uri, first, "FINISHED")
    second = tracking.open_stage_run(uri, "exp", "clip@B16", "fp1")
    assert second != first and tracking.run_status(uri, second) == "RUNNING"
    assert tracking.open_stage_run(uri, "exp", "clip@B16", "fp2") not in (first, second)
