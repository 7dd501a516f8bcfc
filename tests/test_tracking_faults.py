"""Tracking store faults: an outage mid-run (records held, spooled, replayed), the end of a run
during an outage (spool file + replay_spool), failure reasons, and concurrent sweep jobs on one
new sqlite store. No network: outages are simulated on a local sqlite store."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clse.errors import ClseError
from clse.tracking import FAILURE_TAG, Tracker, outbox, replay_spool
from clse.tracking import store as tracking_store  # `store` is the fixture below


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """A migrated empty MLflow database: creating one takes ~7 s, copying it takes nothing."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def store(tmp_path, monkeypatch, template_db):
    """cwd = a fresh tmp dir holding a copy of the template db; MLFLOW_TRACKING_URI unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def clock(monkeypatch):
    """The tracker's monotonic clock, moved by hand: ``clock.advance(31)``."""

    class Clock:
        now = 1000.0

        def advance(self, seconds: float) -> None:
            self.now += seconds

    c = Clock()
    monkeypatch.setattr(outbox, "_monotonic", lambda: c.now)
    return c


class Outage:
    """Makes the tracker's MLflow client fail like a store that went away, while ``down``.

    ``calls`` counts the requests that reached the (failing or working) store.
    """

    METHODS = ("log_batch", "log_artifact", "log_artifacts", "set_terminated")

    def __init__(self, tracker: Tracker, monkeypatch, fail_after: int | None = None):
        from mlflow.exceptions import MlflowException

        self.down = False
        self.calls = 0
        self.fail_after = fail_after  # while down, let this many calls through first
        client = tracker._client
        for name in self.METHODS:
            real = getattr(client, name)

            def fake(*args, _real=real, **kwargs):
                self.calls += 1
                if self.down:
                    if self.fail_after:
                        self.fail_after -= 1
                        return _real(*args, **kwargs)
                    raise MlflowException("(sqlite3.OperationalError) unable to open database",
                                          error_code="TEMPORARILY_UNAVAILABLE")
                return _real(*args, **kwargs)

            monkeypatch.setattr(client, name, fake)


def _client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _history(store: Path, run_id: str, key: str = "train/loss") -> list[tuple[int, float, int]]:
    return [(m.step, m.value, m.timestamp)
            for m in _client(store).get_metric_history(run_id, key)]


def _spool_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tracking_logs(caplog, level=logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("clse.tracking") and r.levelno >= level]


def test_outage_mid_run_is_held_spooled_and_replayed_in_order(store, monkeypatch, clock, caplog):
    caplog.set_level(logging.WARNING, logger="clse.tracking")
    run_dir = store / "outputs" / "run"
    tr = Tracker(spool_dir=run_dir).start("exp", config={"a": 1})
    outage = Outage(tr, monkeypatch)
    for step in range(10):
        tr.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1}, step=step)

    outage.down = True
    outage.calls = 0
    t0 = time.perf_counter()
    for step in range(10, 1010):  # 1000 training steps during the outage
        tr.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1}, step=step)
    tr.set_tags({"clse.params": "123"})
    assert time.perf_counter() - t0 < 5  # holding costs nothing like a request per step
    assert outage.calls == 1  # the first failure; no retry before retry_every (30 s)
    assert tr.unsent == 2001
    warnings = _tracking_logs(caplog)
    assert len(warnings) == 1 and "Training goes on" in warnings[0]

    spool = run_dir / f"mlflow_spool-{tr.run_id}.jsonl"
    assert tr.spool_path == spool and str(spool) in warnings[0]
    lines = _spool_lines(spool)
    assert lines[0] == {"kind": "run", "clse_spool": 1, "run_id": tr.run_id, "uri": tr.uri}
    assert len(lines) == 1 + 2001
    assert lines[1] == {"kind": "metric", "key": "train/loss", "value": 1 / 11,
                        "timestamp": lines[1]["timestamp"], "step": 10}
    assert lines[-1] == {"kind": "tag", "key": "clse.params", "value": "123"}
    spooled_ts = {(d["step"], d["timestamp"]) for d in lines[1:] if d.get("key") == "train/loss"}

    clock.advance(31)  # one try per interval while the store is still down
    for step in range(1010, 1020):
        tr.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1}, step=step)
    assert outage.calls == 2
    assert len(_tracking_logs(caplog)) == 1  # no new warning for the same outage

    outage.down = False  # the store is back, but nothing is sent before the next interval
    tr.log_metrics({"train/loss": 0.5, "train/lr": 0.1}, step=1020)
    assert outage.calls == 2 and tr.unsent == 2023
    clock.advance(31)
    tr.log_metrics({"train/loss": 0.25, "train/lr": 0.1}, step=1021)
    assert tr.unsent == 0 and tr.spool_path is None
    assert not spool.exists()  # everything in it was delivered
    messages = _tracking_logs(caplog)
    assert len(messages) == 2 and "answers again" in messages[1] and "2025 records" in messages[1]

    tr.log_metrics({"train/loss": 0.125, "train/lr": 0.1}, step=1022)  # sent directly again
    tr.end()
    history = _history(store, tr.run_id)
    assert [s for s, _, _ in history] == list(range(1023))  # every step, in order
    assert [v for _, v, _ in history[:1020]] == [1.0 / (s + 1) for s in range(1020)]
    assert spooled_ts <= {(s, ts) for s, _, ts in history}  # original timestamps kept
    assert len(_history(store, tr.run_id, "train/lr")) == 1023
    run = _client(store).get_run(tr.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["clse.params"] == "123"


def test_end_during_outage_leaves_spool_then_replay_spool_delivers(store, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="clse.tracking")
    run_dir = store / "run"
    report = store / "report.md"
    report.write_text("results")
    with pytest.raises(FloatingPointError):
        with Tracker(spool_dir=run_dir).start("exp", config={"a": 1}) as tr:
            outage = Outage(tr, monkeypatch)
            tr.log_metrics({"train/loss": 3.0}, step=0)
            outage.down = True
            for step in range(1, 50):
                tr.log_metrics({"train/loss": 3.0 - step / 100}, step=step)
            tr.log_metrics({"train/loss": float("nan")}, step=50)  # a diverged loss is data too
            tr.log_artifact(report, "reports")
            raise FloatingPointError("loss is NaN at step 50")
    assert not tr.active
    client = _client(store)
    assert client.get_run(tr.run_id).info.status == "RUNNING"  # the store never heard the end
    assert [s for s, _, _ in _history(store, tr.run_id)] == [0]

    spool = run_dir / f"mlflow_spool-{tr.run_id}.jsonl"
    assert spool.is_file() and tr.spool_path == spool and tr.unsent == 53
    errors = _tracking_logs(caplog, logging.ERROR)
    assert len(errors) == 1
    assert str(spool) in errors[0] and "50 metrics, 1 artifact, 1 tag, 1 run status" in errors[0]
    assert f"clse tracking replay {spool}" in errors[0]
    lines = _spool_lines(spool)
    assert lines[-2] == {"kind": "tag", "key": FAILURE_TAG,
                         "value": "FloatingPointError: loss is NaN at step 50"}
    assert lines[-1]["kind"] == "end" and lines[-1]["status"] == "FAILED"

    monkeypatch.undo()  # the store is back
    monkeypatch.chdir(store)
    sent = replay_spool(spool)
    assert sent == {"metric": 50, "artifact": 1, "tag": 1, "end": 1}
    assert not spool.exists() and spool.with_name(spool.name + ".replayed").is_file()
    run = client.get_run(tr.run_id)
    assert run.info.status == "FAILED" and run.info.end_time == lines[-1]["end_time"]
    assert run.data.tags[FAILURE_TAG] == "FloatingPointError: loss is NaN at step 50"
    history = _history(store, tr.run_id)
    assert [s for s, _, _ in history] == list(range(51))
    assert history[49][1] == pytest.approx(2.51) and history[50][1] != history[50][1]  # NaN
    assert {a.path for a in client.list_artifacts(tr.run_id)} == {"config.yaml", "reports"}

    # replaying twice does not duplicate metrics (MLflow drops identical ones)
    again = store / "again.jsonl"
    shutil.copy(spool.with_name(spool.name + ".replayed"), again)
    from clse.cli import main

    assert main(["tracking", "replay", str(again), "--uri", tr.uri]) == 0  # the CLI's way
    assert len(_history(store, tr.run_id)) == 51
    assert main(["tracking", "replay", str(store / "missing.jsonl")]) == 2


def test_replay_spool_errors(store, tmp_path):
    with pytest.raises(ClseError, match="no MLflow spool file"):
        replay_spool(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "metric", "key": "a", "value": 1, "timestamp": 0, "step": 0}\n')
    with pytest.raises(ClseError, match="not a clse MLflow spool record"):
        replay_spool(bad)
    orphan = tmp_path / "orphan.jsonl"
    orphan.write_text(json.dumps({"kind": "run", "clse_spool": 1, "run_id": "0" * 32,
                                  "uri": f"sqlite:///{store / 'mlflow.db'}"}) + "\n"
                      + '{"kind": "tag", "key": "a", "value": "b"}\n')
    with pytest.raises(ClseError, match="not found"):
        replay_spool(orphan)
    assert orphan.is_file()  # left as it was


def test_store_failing_during_replay_loses_and_duplicates_nothing(store, monkeypatch, clock):
    tr = Tracker(spool_dir=store / "run").start("exp", config={})
    outage = Outage(tr, monkeypatch)
    outage.down = True
    for step in range(1250):  # 2500 metrics: three log_batch requests of at most 1000
        tr.log_metrics({"train/loss": float(step), "train/lr": 0.1}, step=step)
    outage.calls, outage.fail_after = 0, 1  # the next try delivers one batch, then fails
    clock.advance(31)
    tr.log_metrics({"train/loss": 1250.0, "train/lr": 0.1}, step=1250)
    assert outage.calls == 2 and tr.unsent == 1502  # the first 1000 went through
    outage.down = False
    clock.advance(31)
    tr.end()
    assert tr.unsent == 0 and not list((store / "run").iterdir())
    history = _history(store, tr.run_id)
    assert [s for s, _, _ in history] == list(range(1251))
    assert _client(store).get_run(tr.run_id).info.status == "FINISHED"


def test_memory_cap_keeps_the_rest_in_the_spool_file(store, monkeypatch, clock, caplog):
    caplog.set_level(logging.WARNING, logger="clse.tracking")
    tr = Tracker(spool_dir=store / "run", max_buffer=100).start("exp", config={})
    outage = Outage(tr, monkeypatch)
    outage.down = True
    for step in range(300):
        tr.log_metrics({"train/loss": float(step)}, step=step)
    assert len(tr._outbox.held) == 0 and tr._outbox.file_only  # memory stays bounded
    assert tr.unsent == 300
    assert sum("only in" in m for m in _tracking_logs(caplog)) == 1
    outage.down = False
    clock.advance(31)
    tr.log_metrics({"train/loss": 300.0}, step=300)
    assert tr.unsent == 0
    tr.end()
    assert [s for s, _, _ in _history(store, tr.run_id)] == list(range(301))


def test_unwritable_spool_dir_keeps_records_in_memory(store, monkeypatch, clock, caplog):
    caplog.set_level(logging.WARNING, logger="clse.tracking")
    (store / "afile").write_text("")
    tr = Tracker(spool_dir=store / "afile" / "run").start("exp", config={})
    outage = Outage(tr, monkeypatch)
    outage.down = True
    for step in range(20):
        tr.log_metrics({"train/loss": float(step)}, step=step)
    messages = _tracking_logs(caplog)
    assert any("cannot write the MLflow spool file" in m for m in messages)
    assert any("in memory only" in m for m in messages)
    tr.end()  # still down: nothing on disk, so the loss is reported as a loss
    errors = _tracking_logs(caplog, logging.ERROR)
    assert len(errors) == 1 and "are lost" in errors[0] and "20 metrics" in errors[0]

    tr2 = Tracker(spool_dir=store / "afile" / "run").start("exp", config={})
    outage = Outage(tr2, monkeypatch)
    outage.down = True
    for step in range(20):
        tr2.log_metrics({"train/loss": float(step)}, step=step)
    outage.down = False
    tr2.end()  # the last try at the end gets through: memory alone was enough
    assert [s for s, _, _ in _history(store, tr2.run_id)] == list(range(20))


def test_rejected_records_are_dropped_not_held(store, caplog):
    caplog.set_level(logging.WARNING, logger="clse.tracking")
    with Tracker(spool_dir=store / "run").start("exp", config={}) as tr:
        tr.log_artifact(store / "no-such-file.txt")  # gone: retrying cannot help
        tr.log_metrics({"train/loss": 1.0}, step=0)
        assert tr.unsent == 0 and tr._outbox.down_since is None
    assert any("no-such-file.txt" in m for m in _tracking_logs(caplog))
    assert [s for s, _, _ in _history(store, tr.run_id)] == [0]
    assert not (store / "run").exists()  # no outage, no spool file


def test_default_spool_dir_is_under_cwd(store, monkeypatch):
    tr = Tracker().start("exp", config={})
    outage = Outage(tr, monkeypatch)
    outage.down = True
    tr.log_metrics({"train/loss": 1.0}, step=0)
    expected = store.resolve() / "mlflow_spool" / f"mlflow_spool-{tr.run_id}.jsonl"
    assert tr.spool_path == expected
    tr.end()
    assert tr.spool_path.is_file()


def test_http_calls_get_bounded_retries(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's setting wins
    import os

    with tracking_store._http_limits("http://host:5000", probe=False):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    # the store is known to be down
    with tracking_store._http_limits("http://host:5000", probe=True):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    with tracking_store._http_limits("sqlite:///x.db", probe=True):
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


# ----------------------------------------------------------------------------- concurrency

JOB = textwrap.dedent("""
    import sys
    import mlflow.tracking  # imported before the barrier: the jobs then hit the store together
    from clse.tracking import Tracker

    uri, index, metrics = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()  # the barrier: every job is ready, go
    with Tracker(uri).start("sweep", run_name=f"job{index}",
                            config={"job": index, "lr": 0.1}) as tr:
        for step in range(metrics):
            tr.log_metrics({"train/loss": index + step / 1000}, step=step)
    print("run", tr.run_id, "unsent", tr.unsent, flush=True)
""")


def run_concurrent_jobs(db: Path, jobs: int, metrics: int = 50, timeout: float = 300):
    """Start ``jobs`` processes that each create a run in the same (new) sqlite store at the
    same moment and log ``metrics`` steps; return ``(index, returncode, stdout, stderr)``."""
    uri = f"sqlite:///{db}"
    procs = [subprocess.Popen([sys.executable, "-c", JOB, uri, str(i), str(metrics)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=db.parent)
             for i in range(jobs)]
    for p in procs:  # wait until each has imported MLflow
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=timeout)
        results.append((i, p.returncode, out, err))
    return results


@pytest.mark.slow
def test_concurrent_sweep_jobs_on_a_new_sqlite_store_lose_no_run(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"  # does not exist: the jobs race to create the schema too
    jobs = 4  # without the schema lock, 2 jobs already lose one; 24 passed when measured
    results = run_concurrent_jobs(db, jobs)
    for i, rc, out, err in results:
        assert rc == 0, f"job {i} failed:\n{err[-3000:]}"
        assert "unsent 0" in out, out
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("sweep")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(f"job{i}" for i in range(jobs))
    for run in runs:
        assert run.info.status == "FINISHED"
        index = int(run.data.params["job"])
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [(m.step, m.value) for m in history] == [(s, index + s / 1000) for s in range(50)]
    assert len(client.search_experiments()) == 2  # "Default" and one "sweep", not two
