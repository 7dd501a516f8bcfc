"""End-to-end runs of the `clse` command line on small real data."""

from __future__ import annotations

import json

import pytest

from tests_cli_helpers import SMALL_EVAL, TINY, clse  # noqa: F401


@pytest.mark.slow
def test_train_end_to_end_tracks_everything(tmp_path):
    res = clse("train", *TINY, *SMALL_EVAL, "hydra.run.dir=run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "it/s" not in res.stderr and "xsim ->" not in res.stderr  # progress=false: no bars
    run_dir = tmp_path / "run"
    assert (run_dir / "export" / "hf" / "model.safetensors").is_file()
    assert (run_dir / "export" / "sentence_transformers" / "modules.json").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("clse")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    assert params["objective.name"] == "mexma" and params["objective.mask_ratio"] == "0.4"
    assert params["alignment.name"] == "mse" and params["trainer.steps"] == "6"
    for key in ("train/loss", "train/objective/mlm", "train/alignment", "train/regularizer",
                "train/lr", "train/tokens_per_s", "train/grad_norm",
                "devtest/xsim/deu_Latn", "devtest/xsim/avg", "dev/xsim/avg",
                "untrained/devtest/xsim/avg"):
        assert key in metrics, key
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4, 6]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "model"} <= artifacts
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/hf", "model/sentence_transformers"} <= model_files
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["devtest/xsim/avg"] == pytest.approx(metrics["devtest/xsim/avg"])

    # the exported SentenceTransformers folder gives clse's embeddings (CLS of the last layer)
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, XLMRobertaModel

    st = SentenceTransformer(str(run_dir / "export" / "sentence_transformers"), device="cpu")
    hf = XLMRobertaModel.from_pretrained(run_dir / "export" / "hf", add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "export" / "hf")
    sents = ["Das ist ein Test.", "This is a test of the exported model."]
    enc = tok(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = hf(**enc).last_hidden_state[:, 0].numpy()
    assert np.allclose(st.encode(sents), cls, atol=1e-5)

    # clse export rebuilds the same folders from the run's checkpoint
    res = clse("export", str(run_dir), str(tmp_path / "exported"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "exported" / "sentence_transformers" / "modules.json").is_file()


@pytest.mark.slow
def test_multirun_sweep(tmp_path):
    res = clse("train", "-m", *TINY, "trainer.steps=2", "trainer.checkpoint_every=0", "eval=none",
               "trainer.export=false", "objective.mask_ratio=0.2,0.6", "hydra.sweep.dir=sweep",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("clse").experiment_id])
    assert sorted(r.data.params["objective.mask_ratio"] for r in runs) == ["0.2", "0.6"]


def test_unknown_group_option_lists_available(tmp_path):
    res = clse("train", "objective=mexmaa", cwd=tmp_path)
    assert res.returncode != 0
    assert "mexma" in res.stderr and "Available options" in res.stderr


def test_user_error_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("eng_Latn\tdeu_Latn\tHello\n")
    res = clse("train", *TINY, "eval=none", f"data.corpora=[{{kind: tsv, path: {bad}}}]", cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "bad.tsv:1" in res.stderr


def test_plugins_json(tmp_path):
    res = clse("plugins", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["plugins"]
    found = {(r["kind"], r["name"]) for r in rows}
    assert {("objective", "mexma"), ("alignment", "mse"), ("alignment", "contrastive"),
            ("regularizer", "koleo"), ("pooling", "cls"), ("encoder", "xlmr"),
            ("evaluator", "xsim")} <= found
    assert all(r["package"] == "clse" for r in rows)


def test_disabled_plugin_is_reported(tmp_path):
    res = clse("plugins", "--json", cwd=tmp_path, env={"CLSE_DISABLE_PLUGINS": "koleo"})
    data = json.loads(res.stdout)
    assert "koleo" not in {r["name"] for r in data["plugins"]}
    assert data["disabled"] == ["koleo"]
