"""Run any clse encoder through mteb's own evaluation (``mteb.evaluate``), offline or on the hub.

Three pieces:

* :class:`MtebEncoder` exposes any object with ``encode(sentences, batch_size) -> (n, D)`` (an
  :class:`clse.eval.model.EvalModel`, a SentenceTransformer, a test double) through mteb's
  ``EncoderProtocol``: ``encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type)``,
  cosine ``similarity`` / ``similarity_pairwise`` and ``mteb_model_meta``, a ``ModelMeta`` whose
  name and revision come from the model's description (see :func:`model_meta`).
* Local tasks, built from files so they run offline (:mod:`clse.eval.mteb_tasks`):
  ``clse.FLORES200BitextMining`` (:func:`flores_task`) and ``clse.TatoebaV1BitextMining``
  (:func:`tatoeba_task`). ``clse/<Name>`` is accepted for ``clse.<Name>``.
* Hub tasks by their mteb name (:func:`hub_task`, ``PAPER_TASKS`` lists the MEXMA paper's). Their
  data comes from the Hugging Face hub or its local cache; without either a :class:`ClseError`
  says so before anything is encoded.

:func:`evaluate` runs ``mteb.evaluate`` with a result folder of its own, where mteb writes its
standard files (``results/<model>/<revision>/<task>.json``, ``model_meta.json``); :func:`flatten`
turns the results into clse metrics ``mteb/<task>/<subset>/<score>`` and ``mteb/<task>/avg``.
Scores stay on mteb's 0-1 scale.

mteb is an optional dependency (``pip install 'clse[mteb]'``); this module imports it only when a
function needs it (the import takes seconds).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from clse.errors import ClseError, ConfigError, DataError
from clse.paths import ENV_VAR, data_root

if TYPE_CHECKING:
    from mteb import AbsTask
    from mteb.models.model_meta import ModelMeta
    from mteb.results import ModelResult

log = logging.getLogger("clse.eval")

FLORES_TASK = "clse.FLORES200BitextMining"
TATOEBA_TASK = "clse.TatoebaV1BitextMining"
LOCAL_TASKS = (FLORES_TASK, TATOEBA_TASK)
INSTALL_HINT = "pip install 'clse[mteb]'"

# mteb names of the tasks of the MEXMA paper (Table 1 BUCC; Tables 2-4 and their per-language
# Tables 18-30 in Appendix E). The paper's labels map to mteb names: PawsX ->
# PawsXPairClassification, Opusparcus -> OpusparcusPC, Cmnl -> Cmnli. mteb 2 marks some as
# superseded (BUCC -> BUCC.v2, STS22 -> STS22.v2, ...); the paper's versions are listed, and mteb
# warns when they run.
PAPER_TASKS: dict[str, list[str]] = {
    "bitext_mining": ["BUCC"],
    "classification": [
        # English (Table 18)
        "AmazonCounterfactualClassification", "AmazonPolarityClassification",
        "AmazonReviewsClassification", "Banking77Classification", "ImdbClassification",
        "MTOPDomainClassification", "MTOPIntentClassification", "MasakhaNEWSClassification",
        "MassiveIntentClassification", "MassiveScenarioClassification",
        "ToxicConversationsClassification",
        # Chinese (19), Danish (21), Norwegian (22), Polish (23); French (20) reuses the above
        "JDReview", "MultilingualSentiment", "OnlineShopping", "Waimai",
        "DanishPoliticalCommentsClassification", "LccSentimentClassification",
        "NordicLangClassification", "NoRecClassification",
        "AllegroReviews", "PAC", "PolEmo2.0-IN", "PolEmo2.0-OUT",
    ],
    "pair_classification": [  # Tables 24-26
        "PawsXPairClassification", "SprintDuplicateQuestions", "XNLI", "OpusparcusPC", "Cmnli",
        "Ocnli",
    ],
    "sts": [  # Tables 27-30
        "BIOSSES", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STS22",
        "STSBenchmark", "STSBenchmarkMultilingualSTS", "ATEC", "BQ", "LCQMC", "PAWSX", "STSB",
        "SICKFr", "CDSC-R", "SICK-R-PL",
    ],
}
# the languages of the paper's per-language tables, as ISO 639-3 codes (mteb's filter)
PAPER_LANGUAGES = ["eng", "fra", "cmn", "zho", "dan", "nob", "pol"]


# ----------------------------------------------------------------------------- mteb itself

def mteb_available() -> bool:
    """Whether mteb can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("mteb") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["mteb"] is None (import blocked)
        return False


def require_mteb():
    """Import and return mteb, or raise a :class:`ClseError` saying how to install it."""
    try:
        import mteb
    except ImportError as exc:
        raise ClseError(f"the MTEB bridge needs the mteb package, which is not installed: "
                        f"{INSTALL_HINT} (or pip install 'mteb>=2')") from exc
    return mteb


# ----------------------------------------------------------------------------- the encoder

def describe_model(model: Any) -> dict[str, Any]:
    """What the model says about itself: ``model.describe()``, clse's ``describe`` for an
    :class:`~clse.eval.model.EvalModel`, else its ``name``."""
    own = getattr(model, "describe", None)
    if callable(own):
        return dict(own())
    from clse.eval.model import EvalModel, describe

    if isinstance(model, EvalModel):
        return describe(model)
    return {"name": getattr(model, "name", "") or type(model).__name__}


def model_meta(model: Any, *, name: str | None = None, revision: str | None = None) -> ModelMeta:
    """An mteb ``ModelMeta`` for ``model``, filled from :func:`describe_model`.

    ``name``: a hub id (``org/model``) is kept; anything else (a folder, a bare name) becomes
    ``clse/<path>``, since mteb requires ``org/name``. ``revision``: the Hugging Face commit the
    weights were loaded from when known, else ``clse-`` + a hash of the description (a different
    pooling or size gives a different revision folder).
    """
    require_mteb()
    from mteb.models.model_meta import ModelMeta

    desc = describe_model(model)
    hf = getattr(model, "model", None)
    n_parameters = None
    if hf is not None and callable(getattr(hf, "parameters", None)):
        n_parameters = int(sum(p.numel() for p in hf.parameters()))
    commit = getattr(getattr(hf, "config", None), "_commit_hash", None)
    fingerprint = hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()
    framework = ["PyTorch"]
    if getattr(model, "sentence_transformer", None) is not None:
        framework.append("Sentence Transformers")
    return ModelMeta(
        loader=None, name=_mteb_model_name(name or str(desc.get("name") or "")),
        revision=revision or (commit if isinstance(commit, str) else f"clse-{fingerprint[:12]}"),
        release_date=None, languages=None, n_parameters=n_parameters, memory_usage_mb=None,
        max_tokens=desc.get("max_length"), embed_dim=desc.get("embed_dim", desc.get("hidden_size")),
        license=None, open_weights=None, public_training_code=None, public_training_data=None,
        framework=framework, similarity_fn_name="cosine", use_instructions=False,
        training_datasets=None)


def _mteb_model_name(raw: str) -> str:
    if not raw:
        return "clse/unnamed"
    path = Path(raw).expanduser()
    hub_id = raw.count("/") == 1 and not raw.startswith((".", "/", "~")) and not path.exists()
    if hub_id:
        return raw
    if path.exists():
        path = path.resolve()
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            pass
    parts = [p for p in path.parts if p not in ("/", "", ".")]
    return "clse/" + "/".join(parts or ["unnamed"])


class MtebEncoder:
    """mteb's ``EncoderProtocol`` around any ``encode(sentences, batch_size) -> (n, D)``.

    mteb hands ``encode`` a DataLoader of text batches; they are gathered and passed to the
    wrapped model in one call, so clse's length-sorted batching applies across the whole set.
    Prompts (``prompt_type`` query/document) are ignored: clse encoders are symmetric.

    Args:
        model: the encoder.
        batch_size: sentences per forward pass; ``None`` takes mteb's ``encode_kwargs`` value.
        name, revision: override the ``ModelMeta`` fields (see :func:`model_meta`).
    """

    def __init__(self, model: Any, *, batch_size: int | None = None, name: str | None = None,
                 revision: str | None = None):
        if not callable(getattr(model, "encode", None)):
            raise ClseError(f"{type(model).__name__} has no encode(sentences, batch_size) method")
        self.model = model
        self.batch_size = batch_size
        self._name = name
        self._revision = revision
        self._meta: ModelMeta | None = None

    @property
    def mteb_model_meta(self) -> ModelMeta:
        if self._meta is None:
            self._meta = model_meta(self.model, name=self._name, revision=self._revision)
        return self._meta

    def encode(self, inputs: Iterable[Mapping[str, Any]], *, task_metadata: Any = None,
               hf_split: str = "", hf_subset: str = "", prompt_type: Any = None,
               **kwargs: Any) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        batch_size = self.batch_size or int(kwargs.get("batch_size") or 32)
        emb = self.model.encode(texts, batch_size=batch_size)
        if hasattr(emb, "detach"):  # a torch tensor
            emb = emb.detach().float().cpu().numpy()
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ClseError(f"the encoder returned shape {emb.shape} for {len(texts)} sentences "
                            f"(task {getattr(task_metadata, 'name', '?')}, subset {hf_subset})")
        return emb

    def similarity(self, embeddings1: Any, embeddings2: Any):
        """Cosine similarity matrix (n1, n2), mteb's own ``cos_sim``."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any):
        """Cosine of row i with row i, (n,), mteb's own ``pairwise_cos_sim``."""
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


# ----------------------------------------------------------------------------- local tasks

def flores_task(data_dir: str | Path | None = None, *, split: str = "devtest",
                languages: Sequence[str] | None = None, target: str = "eng_Latn",
                max_sentences: int | None = None) -> AbsTask:
    """``clse.FLORES200BitextMining`` on one split: subsets ``<lang>-<target>``, X -> target.

    Args:
        data_dir: the shared data folder (``flores200/<split>/``), a folder of ``<split>/``
            folders, or one folder of ``<lang>.txt``; default :func:`clse.paths.data_root`.
        split: ``dev`` or ``devtest`` (the name recorded for a plain folder of files).
        languages: FLORES codes of the source languages; default every file but the target's.
        target: the language searched into.
        max_sentences: keep the first N lines of every language (quick runs).
    """
    from clse.eval.flores import load_multiway

    require_mteb()
    from clse.eval.mteb_tasks import Flores200Local

    folder = _flores_folder(data_dir, split)
    available = sorted(p.stem for p in folder.glob("*.txt"))
    if target not in available:
        raise ClseError(f"{FLORES_TASK}: no {target}.txt in {folder}")
    langs = [lang for lang in (languages or available) if lang != target]
    missing = [lang for lang in langs if lang not in available]
    if missing:
        raise ClseError(f"{FLORES_TASK}: no file for {missing} in {folder} "
                        f"(it has {len(available)} languages: {', '.join(available[:12])}"
                        f"{', ...' if len(available) > 12 else ''})")
    if not langs:
        raise ClseError(f"{FLORES_TASK}: no source language besides {target} in {folder}")
    bad = [lang for lang in [*langs, target] if "-" in lang]
    if bad:
        raise ClseError(f"{FLORES_TASK}: language codes may not contain '-' (mteb splits subset "
                        f"names on it): {bad}; name files like deu_Latn.txt")
    _check_cap(max_sentences)
    sentences = load_multiway(folder, [*langs, target])
    if max_sentences is not None:
        sentences = {lang: lines[:max_sentences] for lang, lines in sentences.items()}
    return Flores200Local({split: sentences}, source=str(folder), target=target)


def _flores_folder(data_dir: str | Path | None, split: str) -> Path:
    root = _root(data_dir, "FLORES-200")
    for cand in (root / "flores200" / split, root / split):
        if cand.is_dir():
            return cand
    if any(root.glob("*.txt")):
        return root
    raise ClseError(f"{FLORES_TASK}: no FLORES-200 split {split!r} under {root} (expected "
                    f"flores200/{split}/<lang>.txt, {split}/<lang>.txt or <lang>.txt there)")


def tatoeba_task(data_dir: str | Path | None = None, *, languages: Sequence[str] | None = None,
                 max_sentences: int | None = None) -> AbsTask:
    """``clse.TatoebaV1BitextMining``: subsets ``<xxx>-eng`` (LASER Tatoeba v1), split ``test``.

    Args:
        data_dir: the shared data folder (``tatoeba/v1/``), or the folder of the
            ``tatoeba.<xxx>-eng.*`` files; default :func:`clse.paths.data_root`.
        languages: Tatoeba codes (``deu``) or FLORES codes (``deu_Latn``, mapped through
            ``langmap.tsv``; FLORES languages without a Tatoeba set are skipped with a warning);
            default every pair found.
        max_sentences: keep the first N pairs of every language.
    """
    require_mteb()
    from clse.eval.mteb_tasks import TatoebaV1Local

    root = _root(data_dir, "Tatoeba v1")
    folder = next((c for c in (root / "tatoeba" / "v1", root / "v1", root)
                   if any(c.glob("tatoeba.*-eng.eng"))), None)
    if folder is None:
        raise ClseError(f"{TATOEBA_TASK}: no LASER Tatoeba v1 files under {root} (expected "
                        f"tatoeba/v1/tatoeba.<xxx>-eng.<xxx> and .eng)")
    available = sorted(p.name.split(".")[1].split("-")[0]
                       for p in folder.glob("tatoeba.*-eng.eng"))
    langmap = _langmap(folder, root)
    codes: list[str] = []
    skipped: list[str] = []
    for lang in (languages or available):
        code = lang
        if "_" in lang:  # a FLORES code: langmap.tsv knows its Tatoeba set, if any
            code = langmap[lang][0] if lang in langmap else (
                None if langmap else lang.split("_")[0])
        if code is None or (code not in available and "_" in lang):
            skipped.append(lang)
        elif code not in available:
            raise ClseError(f"{TATOEBA_TASK}: no Tatoeba v1 pair {code}-eng in {folder}")
        elif code not in codes:
            codes.append(code)
    if skipped:
        warnings.warn(f"{TATOEBA_TASK}: no Tatoeba v1 set for {skipped}; skipped", stacklevel=2)
    if not codes:
        raise ClseError(f"{TATOEBA_TASK}: none of {list(languages or [])} has a Tatoeba v1 set")
    _check_cap(max_sentences)
    pairs = {}
    for code in codes:
        src = _read_lines(folder / f"tatoeba.{code}-eng.{code}")
        eng = _read_lines(folder / f"tatoeba.{code}-eng.eng")
        if len(src) != len(eng):
            raise DataError(folder / f"tatoeba.{code}-eng.{code}", None,
                            f"has {len(src)} lines but its .eng file has {len(eng)}",
                            expected="line-aligned pair files")
        pairs[code] = (src[:max_sentences], eng[:max_sentences])
    scripts = {code: script for code, script in langmap.values() if code}
    return TatoebaV1Local(pairs, source=str(folder), scripts=scripts)


def _langmap(folder: Path, root: Path) -> dict[str, tuple[str | None, str]]:
    """``{flores code: (tatoeba code or None, mteb lang-script)}`` from ``langmap.tsv``.

    Entries marked ``*`` (the Tatoeba set only approximates the FLORES language) get no script.
    """
    shared = data_root()
    for cand in (root, folder.parent, folder.parent.parent, shared):
        path = cand / "langmap.tsv" if cand is not None else None
        if path is not None and path.is_file():
            break
    else:
        return {}
    out: dict[str, tuple[str | None, str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            flores, code = row.get("flores200_code", ""), row.get("tatoeba_v1_code", "-")
            if not flores or not code or code == "-":
                out[flores] = (None, "")
                continue
            exact = not code.endswith("*")
            code = code.rstrip("*")
            out[flores] = (code, f"{code}-{flores.split('_')[-1]}" if exact else code)
    return out


def _read_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _root(data_dir: str | Path | None, what: str) -> Path:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise ClseError(f"mteb local task: data folder {root} does not exist")
        return root
    root = data_root()
    if root is None:
        raise ClseError(f"the local mteb task needs {what}: set {ENV_VAR}=/path/to/shared/data "
                        f"or pass a data folder")
    return root


def _check_cap(max_sentences: int | None) -> None:
    if max_sentences is not None and max_sentences < 1:
        raise ConfigError(f"max_sentences must be >= 1 or null, got {max_sentences}")


# ----------------------------------------------------------------------------- hub tasks

def hub_task(name: str, *, languages: Sequence[str] | None = None, split: str | None = "test",
             load: bool = True) -> AbsTask:
    """An mteb task by name (``STS17``, ``BUCC``, ...), its data loaded from the hub or the cache.

    Args:
        languages: ISO 639-3 codes (``eng``) or ``eng-Latn`` for mteb's language filter.
        split: the one split to evaluate when the task has it (``test``, MTEB's convention);
            ``None`` keeps all the task's evaluation splits.
        load: load the data now, so that a missing network/cache fails here with a clear message.
    """
    mteb = require_mteb()
    try:
        task = mteb.get_task(name)
    except KeyError as exc:
        why = str(exc.args[0] if exc.args else exc).removeprefix("KeyError: ")
        raise ClseError(f"unknown mteb task {name!r} ({why}; "
                        f"local tasks: {', '.join(LOCAL_TASKS)})") from None
    if split is not None and split in task.metadata.eval_splits:
        task = task.filter_eval_splits([split])
    if languages:
        try:
            task = task.filter_languages(list(languages))
        except ValueError as exc:
            raise ClseError(f"mteb task {name}: {exc}") from None
    if load:
        try:
            task.load_data()
        except OSError as exc:  # ConnectionError, DatasetNotFoundError, hub HTTP errors
            where = task.metadata.dataset.get("path", "?")
            raise ClseError(
                f"mteb task {name} needs its data from the Hugging Face hub ({where}), which "
                f"could not be reached and is not in the local cache ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Run once with network access "
                f"(the datasets cache keeps it; HF_HUB_OFFLINE=1 forbids downloads), or use the "
                f"offline tasks {', '.join(LOCAL_TASKS)}") from None
    return task


def canonical_name(name: str) -> str:
    """``clse/FLORES200BitextMining`` -> ``clse.FLORES200BitextMining``; other names unchanged."""
    return "clse." + name[len("clse/"):] if name.startswith("clse/") else name


def get_tasks(names: Sequence[str], *, split: str = "devtest",
              languages: Sequence[str] | None = None, data_dir: str | Path | None = None,
              max_sentences: int | None = None, target: str = "eng_Latn",
              hub_languages: Sequence[str] | None = None,
              hub_split: str | None = "test") -> list[AbsTask]:
    """Local and hub tasks by name, in order (see :func:`flores_task`, :func:`tatoeba_task`,
    :func:`hub_task`). ``split`` is FLORES's; ``languages`` and ``max_sentences`` apply to the
    local tasks only (hub tasks run whole, comparable to published MTEB scores)."""
    tasks = []
    for raw in names:
        name = canonical_name(raw)
        if name == FLORES_TASK:
            tasks.append(flores_task(data_dir, split=split, languages=languages, target=target,
                                     max_sentences=max_sentences))
        elif name == TATOEBA_TASK:
            tasks.append(tatoeba_task(data_dir, languages=languages, max_sentences=max_sentences))
        elif name.startswith("clse."):
            raise ConfigError(f"unknown local mteb task {raw!r}; local tasks: "
                              f"{', '.join(LOCAL_TASKS)}")
        else:
            tasks.append(hub_task(name, languages=hub_languages, split=hub_split))
    return tasks


# ----------------------------------------------------------------------------- running

def evaluate(model: Any, tasks: Sequence[AbsTask], output_folder: str | Path, *,
             batch_size: int = 64, name: str | None = None, revision: str | None = None,
             progress: bool = False) -> ModelResult:
    """``mteb.evaluate`` of ``model`` on ``tasks``; mteb's result files go to ``output_folder``.

    ``model`` is wrapped in :class:`MtebEncoder` unless it already has ``mteb_model_meta``. Every
    call re-runs the tasks (``overwrite_strategy="always"``): results already in the folder are
    replaced, never reused. CO2 tracking is off; mteb's INFO logging too unless ``progress``.
    """
    mteb = require_mteb()
    encoder = model if hasattr(model, "mteb_model_meta") else MtebEncoder(
        model, batch_size=batch_size, name=name, revision=revision)
    cache = mteb.ResultCache(cache_path=Path(output_folder))
    mteb_log = logging.getLogger("mteb")
    level = mteb_log.level
    if not progress:  # mteb logs a few INFO lines per subset; 81 languages make a wall of them
        mteb_log.setLevel(max(level, logging.WARNING))
    try:
        return mteb.evaluate(encoder, list(tasks), cache=cache, overwrite_strategy="always",
                             encode_kwargs={"batch_size": batch_size,
                                            "show_progress_bar": progress},
                             show_progress_bar=progress, co2_tracker=False, raise_error=True)
    finally:
        mteb_log.setLevel(level)


def result_files(output_folder: str | Path) -> list[Path]:
    """mteb's result JSONs in ``output_folder``: ``results/<model>/<revision>/<task>.json``."""
    return sorted(p for p in Path(output_folder).glob("results/*/*/*.json")
                  if p.name != "model_meta.json")


def flatten(tasks: Sequence[AbsTask], result: ModelResult,
            scores: Sequence[str] = ("main_score",)) -> dict[str, float]:
    """clse metrics from an mteb result.

    ``mteb/<task>/<subset>/<score>`` for each subset and each name of ``scores`` (``main_score``
    stands for the task's main score under its own name, e.g. ``f1``; names a task lacks are
    skipped), and ``mteb/<task>/avg``, the mean main score over subsets. A task run on several
    splits names its subsets ``<split>/<subset>``.
    """
    main = {task.metadata.name: task.metadata.main_score for task in tasks}
    metrics: dict[str, float] = {}
    for task_result in result.task_results:
        name = task_result.task_name
        main_name = main.get(name, "main_score")
        several = len(task_result.scores) > 1
        mains = []
        for split, entries in task_result.scores.items():
            for entry in entries:
                subset = f"{split}/{entry['hf_subset']}" if several else entry["hf_subset"]
                mains.append(float(entry["main_score"]))
                for score in scores:
                    key = main_name if score == "main_score" else score
                    value = entry.get("main_score" if score == "main_score" else score)
                    if isinstance(value, (int, float)):
                        metrics[f"mteb/{name}/{subset}/{key}"] = float(value)
        if mains:
            metrics[f"mteb/{name}/avg"] = float(np.mean(mains))
    return metrics
