"""MLflow tracking on a local sqlite store: params, metrics, artifacts, status, nesting, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from clse.errors import ClseError
from clse.tracking import Tracker, default_tracking_uri, flatten, sanitize_name


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


def _client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or default_tracking_uri())


def test_flatten_nested_config():
    cfg = OmegaConf.create({"model": {"hidden": 32, "name": "tiny"}, "lr": 1e-4,
                            "langs": ["eng_Latn", "deu_Latn"], "copy": "${model.hidden}",
                            "heads": [{"w": 1.0}, {"w": 0.01}], "empty": {}, "none": None})
    flat = flatten(cfg)
    assert flat == {"model.hidden": "32", "model.name": "tiny", "lr": "0.0001",
                    "langs": '["eng_Latn", "deu_Latn"]', "copy": "32", "heads.0.w": "1.0",
                    "heads.1.w": "0.01", "empty": "{}", "none": "None"}
    assert flatten({"a": {"b": 1}}, prefix="cfg") == {"cfg.a.b": "1"}


def test_sanitize_name_keeps_slashes():
    assert sanitize_name("train/loss") == "train/loss"
    assert sanitize_name("eval/xsim err%(eng→deu)") == "eval/xsim err__eng_deu_"
    assert sanitize_name("/a//b/./../c/") == "a/b/_/c"
    assert sanitize_name("x:y.z-1 2") == "x:y.z-1 2"


def test_default_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert default_tracking_uri() == "http://example:5000"


def test_mlflow_is_imported_lazily():
    code = "import sys, clse.tracking; assert 'mlflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_run_logs_params_metrics_and_config(store):
    cfg = OmegaConf.create({"trainer": {"lr": 1e-4, "steps": 10}, "note": "x" * 7000,
                            "wide": {f"k{i}": i for i in range(150)}, "ref": "${trainer.steps}"})
    with Tracker().start("table5", run_name="mexma", config=cfg, tags={"seed": 1}) as tr:
        run_id = tr.run_id
        tr.log_metrics({"train/loss": 2.0, "eval/xsim err%": 5.0}, step=1)
        tr.log_metrics({"train/loss": 1.5}, step=2)
        tr.set_tags({"phase": "done"})
        (store / "report.md").write_text("hi")
        tr.log_artifact(store / "report.md", "reports")
    assert tr.run_id == run_id and not tr.active

    client = _client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "mexma"
    params = run.data.params
    assert params["trainer.lr"] == "0.0001" and params["trainer.steps"] == "10"
    assert params["ref"] == "10"  # interpolations resolved
    assert len(params["note"]) == 6000  # MLflow's value limit
    assert len([k for k in params if k.startswith("wide.")]) == 150  # more than one batch of 100
    assert run.data.tags["seed"] == "1" and run.data.tags["phase"] == "done"
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert run.data.metrics["eval/xsim err_"] == 5.0

    assert run.info.artifact_uri.startswith((store / "mlartifacts").resolve().as_uri())
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert arts == {"config.yaml", "reports"}
    local = client.download_artifacts(run_id, "config.yaml", str(store))
    assert OmegaConf.load(local).trainer.steps == 10


def test_exception_marks_run_failed_with_its_reason(store):
    with pytest.raises(ValueError):
        with Tracker().start("exp", run_name="boom", config={"a": 1}) as tr:
            raise ValueError("diverged")
    run = _client().get_run(tr.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["clse.failure_reason"] == "ValueError: diverged"
    tr.end("FINISHED")  # idempotent once ended
    assert _client().get_run(tr.run_id).info.status == "FAILED"

    with pytest.raises(KeyboardInterrupt):
        with Tracker().start("exp", config={}) as tr2:
            raise KeyboardInterrupt
    run = _client().get_run(tr2.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["clse.failure_reason"] == "KeyboardInterrupt"

    with Tracker().start("exp", config={}) as tr3:
        pass
    assert "clse.failure_reason" not in _client().get_run(tr3.run_id).data.tags


def test_fail_records_a_cut_reason(store):
    tr = Tracker().start("exp", config={})
    tr.fail("loss is NaN at step 12\n" + "x" * 5000)
    run = _client().get_run(tr.run_id)
    reason = run.data.tags["clse.failure_reason"]
    assert run.info.status == "FAILED"
    assert reason.startswith("loss is NaN at step 12\nxxx") and len(reason) == 1000
    tr.fail("again")  # ended already: nothing changes
    assert _client().get_run(tr.run_id).data.tags["clse.failure_reason"] == reason

    tr2 = Tracker().start("exp", config={})
    tr2.fail(RuntimeError("CUDA out of memory"))  # an exception: "Type: message"
    assert _client().get_run(tr2.run_id).data.tags["clse.failure_reason"] == \
        "RuntimeError: CUDA out of memory"
    with pytest.raises(ValueError, match="status"):
        tr2.end("DONE")


def test_nested_run_has_parent_tag(store):
    with Tracker().start("sweep", run_name="parent", config={}) as parent:
        with Tracker().start("sweep", run_name="child", config={"x": 1},
                             parent_run_id=parent.run_id) as child:
            child.log_metrics({"loss": 1.0}, step=0)
    client = _client()
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(child.run_id).info.experiment_id == \
        client.get_run(parent.run_id).info.experiment_id
    with pytest.raises(ClseError, match="parent"):
        Tracker().start("sweep", config={}, parent_run_id="0" * 32)


def test_env_tracking_uri_is_respected(store, monkeypatch, template_db):
    other = store / "elsewhere" / "other.db"
    other.parent.mkdir()
    shutil.copy(template_db, other)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    with Tracker().start("exp", config={}) as tr:
        pass
    assert tr.uri == f"sqlite:///{other}"
    assert _client(tr.uri).get_run(tr.run_id).info.status == "FINISHED"
    assert (store / "elsewhere" / "mlartifacts" / "exp").is_dir()  # artifacts beside that db
    assert _client(f"sqlite:///{store / 'mlflow.db'}").get_experiment_by_name("exp") is None


def test_unreachable_server_fails_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ClseError, match=r"http://127\.0\.0\.1:9"):
        Tracker().start("exp", config={})
    assert time.perf_counter() - t0 < 15
    import os

    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # the probe's settings are restored


def test_bad_sqlite_path_is_a_clse_error(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ClseError, match="afile"):
        Tracker(f"sqlite:///{tmp_path}/afile/mlflow.db").start("exp", config={})
    (tmp_path / "adir").mkdir()
    with pytest.raises(ClseError, match="adir"):  # a folder where the database should be
        Tracker(f"sqlite:///{tmp_path}/adir").start("exp", config={})
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(ClseError, match="junk"):
        Tracker(f"sqlite:///{tmp_path}/junk.db").start("exp", config={})


def test_disabled_tracker_does_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never contacted
    with Tracker(enabled=False).start("exp", config={"a": 1}) as tr:
        tr.log_metrics({"loss": 1.0}, step=0)
        tr.log_artifact(tmp_path)
        tr.set_tags({"a": 1})
    assert tr.run_id is None
    assert list(tmp_path.iterdir()) == []
