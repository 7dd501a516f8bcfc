"""``clse eval`` end to end: any encoder folder or clse run, results JSON, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests_cli_helpers import SMALL_EVAL, TINY, clse  # noqa: F401 (conftest puts tests/ on path)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 3-step clse run (mean pooling, no evaluation) tracked in <cwd>/mlflow.db."""
    cwd = tmp_path_factory.mktemp("trained")
    res = clse("train", *TINY, "trainer.steps=3", "trainer.checkpoint_every=3", "eval=none",
               "pooling=mean", "hydra.run.dir=run", cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd


def _client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def test_eval_a_sentence_transformers_folder(trained):
    st_dir = trained / "run" / "export" / "sentence_transformers"
    res = clse("eval", f"model={st_dir}", *SMALL_EVAL, "hydra.run.dir=ev_st", cwd=trained)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((trained / "ev_st" / "results.json").read_text())
    assert results["model"]["pooling"] == "mean" and results["split"] == "devtest"
    metrics = results["metrics"]
    assert set(metrics) == {"devtest/xsim/deu_Latn", "devtest/xsim/fra_Latn", "devtest/xsim/avg"}

    # the same figures computed directly from the Hugging Face folder with clse's pooling
    from clse.eval.flores import BUNDLED_DIR, evaluate_xsim, load_multiway
    from clse.eval.model import load_eval_model

    direct = load_eval_model(str(trained / "run" / "export" / "hf"), pooling="mean")
    sentences = {k: v[:60] for k, v in
                 load_multiway(BUNDLED_DIR, ["deu_Latn", "fra_Latn", "eng_Latn"]).items()}
    want = evaluate_xsim(lambda s: direct.encode(s), sentences, target="eng_Latn",
                         languages=["deu_Latn", "fra_Latn"])
    for lang in ("deu_Latn", "fra_Latn", "avg"):
        assert metrics[f"devtest/xsim/{lang}"] == pytest.approx(want[f"xsim/{lang}"], abs=1e-9)

    # one MLflow run in experiment clse-eval with the metrics and the JSON
    client = _client(trained)
    (run,) = client.search_runs([client.get_experiment_by_name("clse-eval").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id == results["mlflow_run"]
    assert run.data.metrics["devtest/xsim/avg"] == pytest.approx(metrics["devtest/xsim/avg"])
    assert run.data.tags["clse.job"] == "eval"
    assert "results.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_eval_a_run_by_mlflow_id_attached_to_its_training_run(trained):
    client = _client(trained)
    (train_run,) = client.search_runs([client.get_experiment_by_name("clse").experiment_id])
    res = clse("eval", f"model={train_run.info.run_id}", "tracking.attach=true", *SMALL_EVAL,
               "eval.evaluators.xsim.languages=[deu_Latn]", "hydra.run.dir=ev_attach", cwd=trained)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((trained / "ev_attach" / "results.json").read_text())
    assert results["mlflow_run"] == results["source_run"] == train_run.info.run_id
    assert results["model"]["pooling"] == "mean"  # the run's own pooling, from its config
    after = client.get_run(train_run.info.run_id)
    assert after.info.status == "FINISHED"  # attaching does not re-open or end the run
    assert after.data.metrics["devtest/xsim/deu_Latn"] == pytest.approx(
        results["metrics"]["devtest/xsim/deu_Latn"])


def test_eval_errors_are_one_line(tmp_path):
    res = clse("eval", f"model={tmp_path / 'nope'}", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("clse: error:") and "no such folder" in line
    (tmp_path / "empty").mkdir()
    res = clse("eval", f"model={tmp_path / 'empty'}", cwd=tmp_path)
    assert res.returncode == 2 and "modules.json" in res.stderr


def test_eval_model_token_batches_cover_every_sentence(trained):
    from clse.eval.model import load_eval_model

    model = load_eval_model(str(trained / "run"))
    sentences = ["Ein Satz.", "A much longer English sentence than the first one.", "Oui."]
    seen = {}
    for tb in model.token_batches(sentences, batch_size=2, attentions=True):
        assert len(tb.hidden_states) == model.num_layers + 1
        assert tb.attentions.shape[:2] == (len(tb.index), model.model.config.num_attention_heads)
        np.testing.assert_allclose(tb.attentions.sum(-1)[tb.attention_mask.bool()[:, None, :]
                                                          .expand_as(tb.attentions[..., 0])],
                                   1.0, atol=1e-5)
        for row, i in enumerate(tb.index):
            seen[int(i)] = tb.hidden_states[-1][row]
    assert sorted(seen) == [0, 1, 2]
    # the last layer pooled as the run pools it is what encode() returns
    vec = model.encode(sentences)
    assert vec.shape == (3, model.model.config.hidden_size)
