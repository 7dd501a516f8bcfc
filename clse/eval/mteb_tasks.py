"""mteb BitextMining tasks read from local files (imports mteb; use :mod:`clse.eval.mteb_bridge`).

Two tasks, both X -> English in mteb's direction (each X sentence is a query searched among the
English sentences by cosine; mteb scores the nearest neighbour with accuracy, precision, recall and
F1, F1 being the main score):

* ``clse.FLORES200BitextMining``: a multi-way folder of ``<lang>.txt`` (FLORES-200 layout). Like
  mteb's own ``FloresBitextMining`` the split is stored once with one column per language
  (``parallel_subsets``), so English is encoded once per split; subsets are ``<lang>-eng_Latn``.
* ``clse.TatoebaV1BitextMining``: LASER's Tatoeba v1 files ``tatoeba.<xxx>-eng.<xxx|eng>``, one
  subset ``<xxx>-eng`` per pair (as mteb's hub ``Tatoeba`` names them), split ``test``.

The data is read when the task is built (small text files), so missing or ragged files fail early;
the dataset revision recorded in mteb's result JSON is a SHA-1 of exactly the sentences evaluated.
Each task instance carries its own metadata (languages found, split, revision); unlike mteb's hub
tasks it keeps it when mteb unloads the data, so an instance can be evaluated again.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTaskBitextMining
from mteb.abstasks.task_metadata import TaskMetadata

FLORES_NAME = "clse.FLORES200BitextMining"
TATOEBA_NAME = "clse.TatoebaV1BitextMining"

_FLORES_CITATION = r"""
@article{nllb2022,
  author = {{NLLB Team} and Costa-juss{\`a}, Marta R. and others},
  title = {No Language Left Behind: Scaling Human-Centered Machine Translation},
  journal = {arXiv preprint arXiv:2207.04672},
  year = {2022},
}
"""
_TATOEBA_CITATION = r"""
@article{artetxe2019massively,
  author = {Artetxe, Mikel and Schwenk, Holger},
  title = {Massively Multilingual Sentence Embeddings for Zero-Shot Cross-Lingual Transfer
           and Beyond},
  journal = {Transactions of the Association for Computational Linguistics},
  volume = {7},
  pages = {597--610},
  year = {2019},
}
"""


def revision_of(parts: Mapping[str, Sequence[str]]) -> str:
    """A short SHA-1 of named sentence lists (names sorted), the task's dataset revision."""
    digest = hashlib.sha1()
    for key in sorted(parts):
        digest.update(key.encode("utf-8") + b"\0")
        for line in parts[key]:
            digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


class _LocalBitextMining(AbsTaskBitextMining):
    """A bitext task over sentences already in memory; ``metadata`` is per instance."""

    def __init__(self, metadata: TaskMetadata, **kwargs: Any):
        self.metadata = metadata  # before AbsTask.__init__, which reads metadata.hf_subsets
        super().__init__(**kwargs)

    def unload_data(self) -> None:
        # not AbsTask.unload_data: it drops instance metadata (for a hub task that describes a
        # filtered copy of the published data); here it is the only description of the data
        self.dataset = None
        self.data_loaded = False


class Flores200Local(_LocalBitextMining):
    """``clse.FLORES200BitextMining``: ``sentences[split][lang]``, multi-way parallel."""

    parallel_subsets = True

    def __init__(self, sentences: Mapping[str, Mapping[str, list[str]]], *, source: str,
                 target: str = "eng_Latn", **kwargs: Any):
        splits = list(sentences)
        languages = [lang for lang in next(iter(sentences.values())) if lang != target]
        self._sentences = sentences
        metadata = TaskMetadata(
            name=FLORES_NAME,
            dataset={"path": source, "revision": revision_of(
                {f"{split}/{lang}": lines for split, by_lang in sentences.items()
                 for lang, lines in by_lang.items()})},
            description=("FLORES-200 X->English bitext mining from local multi-way <lang>.txt "
                         "files (clse): each X sentence searches all English sentences of the "
                         "split by cosine similarity."),
            reference="https://github.com/facebookresearch/flores/tree/main/flores200",
            type="BitextMining",
            category="t2t",
            modalities=["text"],
            eval_splits=splits,
            eval_langs={f"{lang}-{target}": [_bcp47(lang), _bcp47(target)]
                        for lang in languages},
            main_score="f1",
            date=("2022-01-01", "2022-07-06"),
            domains=["Non-fiction", "Encyclopaedic", "Written"],
            task_subtypes=[],
            license="cc-by-sa-4.0",
            annotations_creators="human-annotated",
            dialect=[],
            sample_creation="created",
            bibtex_citation=_FLORES_CITATION,
        )
        super().__init__(metadata, **kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = DatasetDict({split: Dataset.from_dict(dict(by_lang))
                                    for split, by_lang in self._sentences.items()})
        self.data_loaded = True


class TatoebaV1Local(_LocalBitextMining):
    """``clse.TatoebaV1BitextMining``: ``pairs[code] = (code sentences, English sentences)``."""

    parallel_subsets = False

    def __init__(self, pairs: Mapping[str, tuple[list[str], list[str]]], *, source: str,
                 scripts: Mapping[str, str] | None = None, **kwargs: Any):
        scripts = scripts or {}
        self._pairs = pairs
        metadata = TaskMetadata(
            name=TATOEBA_NAME,
            dataset={"path": source, "revision": revision_of(
                {f"{code}/{side}": lines for code, both in pairs.items()
                 for side, lines in zip(("src", "eng"), both)})},
            description=("LASER Tatoeba v1 X->English bitext mining from local files "
                         "tatoeba.<xxx>-eng.{<xxx>,eng} (clse): each X sentence searches the "
                         "English sentences of its pair by cosine similarity."),
            reference="https://github.com/facebookresearch/LASER/tree/main/data/tatoeba/v1",
            type="BitextMining",
            category="t2t",
            modalities=["text"],
            eval_splits=["test"],
            eval_langs={f"{code}-eng": [scripts.get(code, code), "eng-Latn"] for code in pairs},
            main_score="f1",
            date=("2019-01-01", "2019-12-31"),
            domains=["Written"],
            task_subtypes=[],
            license="cc-by-2.0",
            annotations_creators="human-annotated",
            dialect=[],
            sample_creation="found",
            bibtex_citation=_TATOEBA_CITATION,
        )
        super().__init__(metadata, **kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = {f"{code}-eng": DatasetDict({"test": Dataset.from_dict(
            {"sentence1": src, "sentence2": eng})}) for code, (src, eng) in self._pairs.items()}
        self.data_loaded = True


def _bcp47(code: str) -> str:
    """FLORES ``deu_Latn`` -> mteb's ``deu-Latn``."""
    return code.replace("_", "-")
