"""The MTEB bridge: local bitext tasks through mteb.evaluate, the adapter, hub tasks offline."""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np
import pytest

from clse.errors import ClseError, ConfigError
from clse.eval import mteb_bridge as bridge

# mteb's bitext search copies our similarity tensor with torch.tensor(); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")
needs_mteb = pytest.mark.skipif(not bridge.mteb_available(),
                                reason="mteb is not installed (pip install 'clse[mteb]')")

FLORES = bridge.FLORES_TASK
TATOEBA = bridge.TATOEBA_TASK


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def weighted_f1(pred: np.ndarray) -> float:
    """mteb's bitext F1 by its definition: query i's gold is line i; per-class F1 averaged over
    the gold classes (each has support 1): class c scores 2 / (1 + #queries sent to c) when query
    c found it, else 0."""
    hits = np.bincount(pred, minlength=len(pred))
    return float(np.mean([2.0 / (1 + hits[c]) if pred[c] == c else 0.0
                          for c in range(len(pred))]))


# --------------------------------------------------------------------------- known vectors

E = np.eye(4, dtype=np.float32)
VECTORS = {**{f"en{i}": E[i] for i in range(4)}, **{f"de{i}": E[i] + 0.05 for i in range(4)},
           "fr0": E[0], "fr1": E[0] + 0.1 * E[1], "fr2": E[2], "fr3": E[3]}  # fr1 -> en0


class LookupEncoder:
    """Returns a fixed vector per sentence: deu finds every line, fra sends lines 0 and 1 to 0."""

    name = "lookup"

    def __init__(self):
        self.calls: list[int] = []

    def encode(self, sentences, batch_size: int = 64) -> np.ndarray:
        self.calls.append(len(sentences))
        return np.stack([VECTORS[s] for s in sentences])


@pytest.fixture
def lookup_dir(tmp_path):
    for lang, prefix in (("eng_Latn", "en"), ("deu_Latn", "de"), ("fra_Latn", "fr")):
        write(tmp_path / "flores200" / "devtest" / f"{lang}.txt",
              [f"{prefix}{i}" for i in range(4)])
    return tmp_path


@needs_mteb
def test_flores_task_scores_known_vectors_and_writes_mteb_results(lookup_dir, tmp_path):
    task = bridge.flores_task(lookup_dir, split="devtest")
    assert task.hf_subsets == ["deu_Latn-eng_Latn", "fra_Latn-eng_Latn"]
    encoder = LookupEncoder()
    out = tmp_path / "out"
    result = bridge.evaluate(encoder, [task], out, batch_size=2)
    assert sorted(encoder.calls) == [4, 4, 4]  # English encoded once for both pairs

    (path,) = bridge.result_files(out)
    assert path.name == f"{FLORES}.json" and path.parent.parent.name == "clse__lookup"
    assert (path.parent / "model_meta.json").is_file()
    saved = json.loads(path.read_text())
    assert saved["task_name"] == FLORES and saved["dataset_revision"] == task.metadata.revision
    by_subset = {s["hf_subset"]: s for s in saved["scores"]["devtest"]}
    assert by_subset["deu_Latn-eng_Latn"]["f1"] == 1.0
    fra = by_subset["fra_Latn-eng_Latn"]  # predictions [0, 0, 2, 3]
    assert fra["accuracy"] == 0.75 and fra["precision"] == 0.625 and fra["recall"] == 0.75
    assert fra["f1"] == pytest.approx(2 / 3, abs=1e-6)  # (2/3 + 0 + 1 + 1) / 4
    assert fra["f1"] == pytest.approx(weighted_f1(np.array([0, 0, 2, 3])), abs=1e-6)

    metrics = bridge.flatten([task], result, scores=["main_score", "accuracy"])
    deu, fra = f"mteb/{FLORES}/deu_Latn-eng_Latn", f"mteb/{FLORES}/fra_Latn-eng_Latn"
    assert metrics == pytest.approx({
        f"{deu}/f1": 1.0, f"{deu}/accuracy": 1.0, f"{fra}/f1": 2 / 3, f"{fra}/accuracy": 0.75,
        f"mteb/{FLORES}/avg": (1 + 2 / 3) / 2})

    # the instance keeps its own metadata after mteb unloads it, and runs again
    again = bridge.flatten([task], bridge.evaluate(encoder, [task], out, batch_size=2))
    assert again[f"mteb/{FLORES}/avg"] == pytest.approx((1 + 2 / 3) / 2)


# --------------------------------------------------------------------------- a tiny EvalModel

ENG = ["the cat sleeps on the mat", "a red car drives fast", "we eat bread and cheese",
       "rain falls in the old town", "my brother plays the guitar", "ten birds sit on a wire",
       "the river runs to the sea", "she reads a long book", "open the window please",
       "the train leaves at nine", "green apples are sour", "he writes a letter home"]
DEU = ["die katze schläft auf der matte", "ein rotes auto fährt schnell",
       "wir essen brot und käse", "regen fällt in der alten stadt",
       "mein bruder spielt gitarre", "zehn vögel sitzen auf einem draht",
       "der fluss fließt zum meer", "sie liest ein langes buch", "öffne bitte das fenster",
       "der zug fährt um neun", "grüne äpfel sind sauer", "er schreibt einen brief nach hause"]
FRA = ["le chat dort sur le tapis", "une voiture rouge roule vite", "nous mangeons du pain",
       "la pluie tombe sur la vieille ville", "mon frère joue de la guitare",
       "dix oiseaux sur un fil", "la rivière coule vers la mer", "elle lit un long livre",
       "ouvre la fenêtre", "le train part à neuf heures", "les pommes vertes sont acides",
       "il écrit une lettre"]


@pytest.fixture(scope="module")
def tiny_model():
    from clse.data.tokenizer import train_tokenizer
    from clse.eval.model import EvalModel
    from tests.conftest import tiny_xlmr

    tok = train_tokenizer(ENG + DEU + FRA, 120)
    return EvalModel(tiny_xlmr(vocab_size=len(tok)).eval(), tok, "mean", name="tiny/xlmr",
                     max_length=60)


@pytest.fixture
def multi_dir(tmp_path):
    for lang, lines in (("eng_Latn", ENG), ("deu_Latn", DEU), ("fra_Latn", FRA)):
        write(tmp_path / "flores200" / "devtest" / f"{lang}.txt", lines)
    write(tmp_path / "tatoeba" / "v1" / "tatoeba.deu-eng.deu", DEU[:10])
    write(tmp_path / "tatoeba" / "v1" / "tatoeba.deu-eng.eng", ENG[:10])
    return tmp_path


@needs_mteb
def test_plugin_on_an_eval_model_matches_clse_nearest_neighbour(tiny_model, multi_dir, tmp_path):
    from clse.eval.xsim import margin_nn
    from clse_plugins.mteb_eval import MtebConfig, MtebEvaluator

    cfg = MtebConfig(tasks=["clse/FLORES200BitextMining", TATOEBA], languages=["deu_Latn",
                     "fra_Latn"], source=str(multi_dir), batch_size=5,
                     scores=["main_score", "accuracy"])
    out = tmp_path / "ev"
    with pytest.warns(UserWarning, match=r"no Tatoeba v1 set for \['fra_Latn'\]"):
        metrics = MtebEvaluator(cfg)(tiny_model, "devtest", out_dir=out)

    files = {p.name for p in bridge.result_files(out)}
    assert files == {f"{FLORES}.json", f"{TATOEBA}.json"}
    meta = json.loads(next(out.glob("results/*/*/model_meta.json")).read_text())
    assert meta["name"] == "tiny/xlmr" and meta["revision"].startswith("clse-")
    assert meta["embed_dim"] == 32 and meta["max_tokens"] == 60 and meta["n_parameters"] > 0

    # the same search done by clse on the same embeddings: plain cosine nearest neighbour
    eng = tiny_model.encode(ENG)
    expected = {}
    for task, subset, src, tgt in ((FLORES, "deu_Latn-eng_Latn", DEU, eng),
                                   (FLORES, "fra_Latn-eng_Latn", FRA, eng),
                                   (TATOEBA, "deu-eng", DEU[:10], eng[:10])):
        src_emb = tiny_model.encode(src)
        sims = np.sort((src_emb / np.linalg.norm(src_emb, axis=1, keepdims=True))
                       @ (tgt / np.linalg.norm(tgt, axis=1, keepdims=True)).T, axis=1)
        assert (sims[:, -1] - sims[:, -2]).min() > 1e-6  # no near-ties: both sides agree
        pred = margin_nn(src_emb, tgt, 4, "absolute")
        expected[f"mteb/{task}/{subset}/accuracy"] = float(np.mean(pred == np.arange(len(src))))
        expected[f"mteb/{task}/{subset}/f1"] = weighted_f1(pred)
    expected[f"mteb/{FLORES}/avg"] = np.mean([expected[f"mteb/{FLORES}/{s}-eng_Latn/f1"]
                                              for s in ("deu_Latn", "fra_Latn")])
    expected[f"mteb/{TATOEBA}/avg"] = expected[f"mteb/{TATOEBA}/deu-eng/f1"]
    assert metrics == pytest.approx(expected, abs=1e-9)
    assert 0 < expected[f"mteb/{FLORES}/fra_Latn-eng_Latn/accuracy"] < 1  # a non-trivial case


@needs_mteb
@pytest.mark.shared_data
def test_shared_flores_two_languages_agree_with_xsim_absolute(tmp_path):
    from clse.eval.xsim import xsim_error_rate

    class Ngrams:
        name = "ngrams"

        def encode(self, sentences, batch_size: int = 64) -> np.ndarray:
            out = np.zeros((len(sentences), 1024), dtype=np.float32)
            for row, text in enumerate(sentences):
                padded = f"  {text.lower()}  "
                for i in range(len(padded) - 2):
                    out[row, zlib.crc32(padded[i:i + 3].encode()) % 1024] += 1.0
            return out

    task = bridge.flores_task(split="devtest", languages=["deu_Latn", "fra_Latn"],
                              max_sentences=50)
    task.load_data()
    data = task.dataset["devtest"]
    assert data.num_rows == 50 and set(data.column_names) == {"deu_Latn", "fra_Latn", "eng_Latn"}
    enc = Ngrams()
    result = bridge.evaluate(enc, [task], tmp_path, batch_size=64)
    metrics = bridge.flatten([task], result, scores=["accuracy"])
    eng = enc.encode(data["eng_Latn"])
    for lang in ("deu_Latn", "fra_Latn"):
        err = xsim_error_rate(enc.encode(data[lang]), eng, margin="absolute")
        assert metrics[f"mteb/{FLORES}/{lang}-eng_Latn/accuracy"] == pytest.approx(1 - err / 100)
    assert metrics[f"mteb/{FLORES}/deu_Latn-eng_Latn/accuracy"] > 0.5  # n-grams carry far


# --------------------------------------------------------------------------- errors

@needs_mteb
def test_hub_task_offline_is_a_clear_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        task = bridge.hub_task("STS12")
    except ClseError as exc:
        message = str(exc)
    else:
        pytest.skip(f"{task.metadata.name} is in this machine's datasets cache")
    assert "STS12" in message and "Hugging Face hub" in message and "cache" in message
    assert FLORES in message  # points at the offline alternatives

    with pytest.raises(ClseError, match="unknown mteb task 'STS1200'.*Did you mean"):
        bridge.hub_task("STS1200", load=False)
    task = bridge.hub_task("AmazonCounterfactualClassification", languages=["deu"], load=False)
    assert task.eval_splits == ["test"] and task.hf_subsets == ["de"]


def test_without_mteb_the_error_says_how_to_install(monkeypatch, lookup_dir):
    from clse_plugins.mteb_eval import MtebConfig, MtebEvaluator

    monkeypatch.setitem(sys.modules, "mteb", None)  # import mteb -> ImportError
    with pytest.raises(ClseError, match=r"pip install 'clse\[mteb\]'"):
        bridge.require_mteb()
    evaluator = MtebEvaluator(MtebConfig(source=str(lookup_dir)))
    with pytest.raises(ClseError, match=r"clse\[mteb\]"):
        evaluator(LookupEncoder(), "devtest")


def test_local_task_errors(tmp_path, lookup_dir):
    from clse_plugins.mteb_eval import MtebConfig, MtebEvaluator, expand

    with pytest.raises(ConfigError, match="unknown local mteb task"):
        MtebEvaluator(MtebConfig(tasks=["clse/Flores"]))
    with pytest.raises(ConfigError, match="mexma:all"):
        expand(["mexma:retrieval"])
    assert expand(["clse/FLORES200BitextMining", "mexma:sts", "STS12"])[:3] == [
        FLORES, "BIOSSES", "SICK-R"]
    if bridge.mteb_available():
        with pytest.raises(ClseError, match="no file for \\['ita_Latn'\\]"):
            bridge.flores_task(lookup_dir, languages=["ita_Latn"])
        with pytest.raises(ClseError, match="no FLORES-200 split 'dev'"):
            bridge.flores_task(tmp_path / "flores200", split="dev")


@needs_mteb
def test_paper_tasks_exist_in_mteb_and_config_files_compose():
    from hydra import compose, initialize_config_module

    from clse.config import setup
    from clse.plugins import registry

    setup()
    for group, names in bridge.PAPER_TASKS.items():
        for name in names:  # each exists and has a subset in the paper's languages
            task = bridge.hub_task(name, languages=bridge.PAPER_LANGUAGES, load=False)
            assert task.metadata.name == name and task.hf_subsets, group
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["model=x", "eval=[mteb,mteb_paper]"])
    evaluators = cfg.eval.evaluators
    assert list(evaluators.mteb.tasks) == [FLORES] and evaluators.mteb.hub_split == "test"
    assert list(evaluators.mteb_paper.hub_languages) == bridge.PAPER_LANGUAGES
    paper = registry().build("evaluator", evaluators.mteb_paper)
    assert len(paper.task_names) == sum(map(len, bridge.PAPER_TASKS.values()))
