"""Language-balanced batch sampling: p_l ∝ n_l^alpha (XLM / XLM-R / MEXMA temperature sampling).

A batch is a pure function of ``(seed, step)``: ``numpy.random.default_rng([seed, step])``
draws it, so a run resumed at step s sees exactly the batches an uninterrupted run would have
seen, with no sampler state to checkpoint. Sampling is with replacement (no epochs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clse.data.languages import PIVOT
from clse.data.readers import Pair, pair_language
from clse.errors import ConfigError

MIXES = ("per_example", "per_batch")


class LanguageSampler:
    """Draws pair indices: a language by p_l ∝ n_l^alpha, then a pair of it uniformly.

    Pairs are grouped by their non-pivot language (:func:`clse.data.readers.pair_language`).
    ``alpha=1`` samples in proportion to the data, ``alpha=0`` uniformly over languages.

    Args:
        pairs: the corpus.
        alpha: the exponent (>= 0); default 0.5.
        seed: non-negative integer seed.
        mix: ``per_example`` (each example draws its own language) or ``per_batch`` (one
            language for the whole batch).
        pivot: the language pairs are grouped away from.
    """

    def __init__(self, pairs: Sequence[Pair], alpha: float = 0.5, seed: int = 0,
                 mix: str = "per_example", pivot: str = PIVOT):
        if not pairs:
            raise ConfigError("LanguageSampler needs at least one pair")
        if not alpha >= 0:
            raise ConfigError(f"sampling alpha must be >= 0, got {alpha}")
        if mix not in MIXES:
            raise ConfigError(f"unknown sampling mix {mix!r}; expected one of {MIXES}")
        if int(seed) < 0:
            raise ConfigError(f"sampling seed must be >= 0, got {seed}")
        self.alpha, self.seed, self.mix = float(alpha), int(seed), mix
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            groups.setdefault(pair_language(p, pivot), []).append(i)
        self.languages: list[str] = sorted(groups)  # sorted: the same draw whatever the file order
        self._index = [np.asarray(groups[lg], dtype=np.int64) for lg in self.languages]
        self._counts = np.array([len(ix) for ix in self._index], dtype=np.int64)
        # all indices language by language, and where each language starts: one gather per draw
        self._flat = np.concatenate(self._index)
        self._start = np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)
        w = self._counts.astype(np.float64) ** self.alpha
        self._p = w / w.sum()

    def probabilities(self) -> dict[str, float]:
        """Sampling probability of each language (for logging)."""
        return {lg: float(p) for lg, p in zip(self.languages, self._p)}

    def counts(self) -> dict[str, int]:
        """Number of pairs of each language."""
        return {lg: int(n) for lg, n in zip(self.languages, self._counts)}

    def batch(self, step: int, batch_size: int) -> list[int]:
        """Indices into ``pairs`` of the batch at ``step``: deterministic in (seed, step)."""
        if step < 0 or batch_size < 1:
            raise ValueError(f"need step >= 0 and batch_size >= 1, got {step}, {batch_size}")
        return self.draw(np.random.default_rng([self.seed, int(step)]), batch_size).tolist()

    def draw_language(self, rng: np.random.Generator) -> int:
        """One language (an index into :attr:`languages`) drawn with ``rng`` by p_l."""
        return int(rng.choice(len(self._p), p=self._p))

    def draw(self, rng: np.random.Generator, size: int, language: int | None = None) -> np.ndarray:
        """``size`` pair indices (int64) drawn with ``rng`` exactly as :meth:`batch` draws them.

        For callers that build batches from their own generator
        (:class:`clse.data.batching.BatchPlanner`). ``language`` (an index into
        :attr:`languages`) draws every pair from that language; ``None`` follows ``mix``
        (``per_batch``: one language drawn first for all ``size`` pairs).
        """
        if language is not None:
            lang = np.full(size, int(language))
        elif self.mix == "per_batch":
            lang = np.full(size, rng.choice(len(self._p), p=self._p))
        else:
            lang = rng.choice(len(self._p), size=size, p=self._p)
        within = rng.integers(0, self._counts[lang])  # one uniform draw per example
        return self._flat[self._start[lang] + within]
