"""Which pairs form the batch of each step: length bucketing and token-budget batches.

:class:`BatchPlanner` wraps a :class:`clse.data.sampling.LanguageSampler` and keeps its contract:
the batch of a step is a pure function of ``(seed, step, rank, world_size)`` and the options, so
a resumed run sees the batches an uninterrupted one would have, with no state to checkpoint.

* **default** (``bucket=1``, ``max_tokens=None``): ``LanguageSampler.batch(step, batch_size)``,
  bit for bit, so existing runs reproduce.
* **bucket=k**: ``k`` consecutive steps share a pool drawn from its own stream; the pool is
  sorted by length and cut into batches of similar length (less padding), handed out in a
  random order. Languages are drawn per example *before* sorting, so the language distribution
  is the sampler's and a batch mixes languages unless their lengths differ wildly.
* **max_tokens=N**: a batch takes drawn pairs until the next one would push its cost past ``N``
  tokens (``packed``: real tokens of both sides; ``padded``: ``B * longest`` per side, what the
  padding collator allocates), so batch memory is bounded instead of the sentence count.

:class:`TokenLengths` supplies the lengths, tokenising each pair the first time it is drawn.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from clse.data.readers import Pair
from clse.data.sampling import LanguageSampler
from clse.errors import ConfigError

log = logging.getLogger(__name__)

COSTS = ("packed", "padded")
# Bucket pools draw from default_rng([seed, pool, _POOL_TAG(, rank)]): a stream no ordinary
# batch ([seed, step]) or token-budget batch ([seed, step, rank]) uses.
_POOL_TAG = 0x6275636B  # "buck"


class LengthOracle(Protocol):
    """``(len_a, len_b)`` int64 token counts of the pairs at ``idx`` (see :class:`TokenLengths`)."""

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class TokenLengths:
    """Token counts of side A (``src``) and B (``tgt``) of each pair, computed on first use.

    A count includes the special tokens and stops at ``max_length``: the real (unpadded) tokens
    the :class:`clse.data.collate.Collator` gives that row. Counts are cached in two int32 arrays
    (-1: not yet known) and only pairs never seen before are tokenised, in batched calls of at
    most ``chunk_size`` texts, so a 1M-pair corpus is not tokenised up front.

    Args:
        pairs: the corpus (the indices the sampler draws).
        tokenizer: a Hugging Face fast tokenizer, or any callable ``list[str] -> token counts``
            (another tokeniser, tests); its counts are clipped to ``max_length``.
        max_length: the collator's ``max_length``.
        chunk_size: texts per tokenizer call.
        prompt: the collator's prompt (prepended to every text before counting).
    """

    def __init__(self, pairs: Sequence[Pair], tokenizer: Any, max_length: int = 200,
                 chunk_size: int = 4096, prompt: str = ""):
        if max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2, got {max_length}")
        self.pairs, self.max_length, self.chunk_size = pairs, int(max_length), int(chunk_size)
        self.prompt = prompt
        self._count = self._tokenizer_counter(tokenizer) if hasattr(tokenizer, "model_max_length") \
            else tokenizer
        self._a = np.full(len(pairs), -1, dtype=np.int32)
        self._b = np.full(len(pairs), -1, dtype=np.int32)

    @classmethod
    def from_arrays(cls, len_a: Sequence[int], len_b: Sequence[int]) -> TokenLengths:
        """Lengths known in advance (a saved cache, tests): nothing is tokenised."""
        a, b = np.asarray(len_a, dtype=np.int32), np.asarray(len_b, dtype=np.int32)
        if a.shape != b.shape or a.ndim != 1 or (a < 1).any() or (b < 1).any():
            raise ValueError("need two 1-d arrays of equal length with counts >= 1")
        self = cls.__new__(cls)
        self.pairs, self.max_length, self.chunk_size, self._count = None, None, 0, None
        self._a, self._b = a.copy(), b.copy()
        return self

    def _tokenizer_counter(self, tokenizer: Any) -> Callable[[list[str]], list[int]]:
        def count(texts: list[str]) -> list[int]:
            if self.prompt:
                texts = [self.prompt + t for t in texts]
            ids = tokenizer(texts, truncation=True, max_length=self.max_length,
                            add_special_tokens=True, return_attention_mask=False,
                            return_token_type_ids=False)["input_ids"]
            return [len(x) for x in ids]
        return count

    def __len__(self) -> int:
        return len(self._a)

    @property
    def computed(self) -> int:
        """How many pairs have known lengths (laziness, progress)."""
        return int((self._a >= 0).sum())

    def __call__(self, idx: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        missing = idx[self._a[idx] < 0]
        if missing.size:
            self._fill(np.unique(missing))
        return self._a[idx].astype(np.int64), self._b[idx].astype(np.int64)

    def compute_all(self) -> None:
        """Tokenise every pair not yet known (e.g. to report the corpus' length distribution)."""
        self._fill(np.flatnonzero(self._a < 0))

    def _fill(self, todo: np.ndarray) -> None:
        for lo in range(0, len(todo), self.chunk_size):
            chunk = todo[lo:lo + self.chunk_size]
            for side, out in (("src", self._a), ("tgt", self._b)):
                n = np.asarray(self._count([getattr(self.pairs[i], side) for i in chunk]))
                out[chunk] = np.clip(n, 1, self.max_length)  # >= 1: a batch cost grows each pair


def batch_stats(indices: Sequence[int], lengths: LengthOracle) -> dict[str, float]:
    """Sentences, real and padded tokens and the padding ratio of one batch (for logging).

    Padded tokens are what a collator padding each side to its longest row allocates; the
    padding ratio is the share of those that are padding (0 when packing).
    """
    a, b = lengths(np.asarray(indices, dtype=np.int64))
    real = int(a.sum() + b.sum())
    padded = len(a) * int(a.max() + b.max())
    return {"sentences": float(len(a)), "real_tokens": float(real),
            "padded_tokens": float(padded), "padding_ratio": 1.0 - real / padded}


def _option(key: str, value: Any, minimum: int, what: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        null = " or null" if allow_none else ""
        raise ConfigError(f"{key} must be an integer >= {minimum}{null} ({what}), got {value!r}")
    return int(value)


class BatchPlanner:
    """The pair indices of the batch at each step: a pure function of (seed, step, rank).

    Sentence-count batches (``max_tokens=None``) are sharded: the global batch of
    ``batch_size * world_size`` rows is drawn from ``[seed, step]`` and rank r takes rows
    ``[r*B, (r+1)*B)``, so the ranks together see what one process with the global batch size
    sees. With ``world_size=1`` and ``bucket=1`` this is exactly ``sampler.batch(step, B)``.

    ``bucket=k`` (k > 1): steps ``p*k .. p*k+k-1`` share pool p, drawn from
    ``[seed, p, tag]``. The pool holds k global batches drawn per example from the sampler's
    language distribution (hence every batch stays multilingual under ``per_example``); it is
    sorted by ``max(len_a, len_b)`` with random tie-breaks, cut into k consecutive batches and
    step s gets batch ``perm[s % k]`` of a random permutation (random order, not short to
    long). Every pooled pair is used once, so the language and length distributions over
    whole pools are the sampler's. ``per_batch``: the pool draws one language per batch and
    sorts within languages, so each batch is still one language.

    ``max_tokens=N``: each rank draws its own batch from ``[seed, step, rank]`` (ranks then hold
    different sentence counts; ``world_size=1`` is deterministic but differs from the
    sentence-count batches). Candidates are drawn in chunks and taken in draw order until the
    next would make the cost exceed N, or ``max_sentences`` are taken; a pair costing more than
    N alone is a batch of one (warned once). With ``bucket=k`` each rank draws pool
    ``[seed, p, tag, rank]`` until it holds k budgets' worth of tokens (each pair counted at most
    N), sorts it and cuts it into c >= k about equally full budget batches (c ~ 1.2k under
    ``padded`` cost, where a/b length mismatch adds padding); a random k of them are used, in
    random order, and the rest dropped independently of their content (no length bias). Under a
    budget the longest pairs form small batches, which may then hold a single language.

    Args:
        sampler: the language sampler (seed, mix, language distribution).
        batch_size: sentences per rank per batch (ignored when ``max_tokens`` is set).
        bucket: pool size in batches (``data.bucket``); 1 = no length bucketing.
        max_tokens: token budget per batch (``data.max_tokens``); None = ``batch_size``.
        cost: ``packed`` or ``padded`` (``data.token_cost``).
        max_sentences: optional cap on a token-budget batch (``data.max_sentences``).
        lengths: token counts (a :class:`TokenLengths`), needed for ``bucket > 1`` and
            ``max_tokens``.
        rank: this process' rank.
        world_size: number of processes.
    """

    def __init__(self, sampler: LanguageSampler, batch_size: int = 32, *, bucket: int = 1,
                 max_tokens: int | None = None, cost: str = "padded",
                 max_sentences: int | None = None, lengths: LengthOracle | None = None,
                 rank: int = 0, world_size: int = 1):
        self.batch_size = _option("data.batch_size", batch_size, 1, "sentences per batch")
        self.bucket = _option("data.bucket", bucket, 1, "batches per length-sorted pool; "
                              "1 = no bucketing, 8-64 typical")
        self.max_tokens = _option("data.max_tokens", max_tokens, 2,
                                  "tokens per batch; null = data.batch_size sentences", True)
        self.max_sentences = _option("data.max_sentences", max_sentences, 1,
                                     "cap on sentences in a token-budget batch", True)
        if cost not in COSTS:
            raise ConfigError(f"data.token_cost must be one of {COSTS} (packed: real tokens; "
                              f"padded: batch size x longest row per side), got {cost!r}")
        world_size = _option("world_size", world_size, 1, "number of processes")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
                or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        if lengths is None and (self.bucket > 1 or self.max_tokens is not None):
            raise ValueError("data.bucket > 1 and data.max_tokens need token lengths: "
                             "pass lengths=TokenLengths(pairs, tokenizer, max_length)")
        n_pairs = sum(sampler.counts().values())
        if lengths is not None and hasattr(lengths, "__len__") and len(lengths) != n_pairs:
            raise ValueError(f"lengths cover {len(lengths)} pairs, the sampler {n_pairs}")
        self.sampler, self.cost, self.lengths = sampler, cost, lengths
        self.rank, self.world_size = int(rank), world_size
        self._pool: tuple[int, list[np.ndarray]] | None = None  # the last pool: pure, a cache
        self._warned = False

    def batch(self, step: int) -> list[int]:
        """Indices into the corpus of this rank's batch at ``step`` (a micro-batch index)."""
        if step < 0:
            raise ValueError(f"need step >= 0, got {step}")
        step = int(step)
        if self.bucket > 1:
            rows = self._pool_batches(step // self.bucket)[step % self.bucket]
        elif self.max_tokens is None:
            rows = self.sampler.draw(np.random.default_rng([self.sampler.seed, step]),
                                     self.batch_size * self.world_size)
        else:
            rows = self._budget_batch(np.random.default_rng([self.sampler.seed, step, self.rank]))
        if self.max_tokens is None:  # this rank's slice of the global batch
            rows = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return rows.tolist()

    # ----------------------------------------------------------------- token budgets

    def _fit(self, a: np.ndarray, b: np.ndarray, budget: int | None = None) -> tuple[int, bool]:
        """How many of the leading pairs fit ``budget`` (max_tokens), and whether that closes
        the batch (the next pair would not fit, or max_sentences is reached)."""
        budget = budget or self.max_tokens
        if self.cost == "packed":
            cost = np.cumsum(a + b)
        else:  # each side padded to its longest row
            longest = np.maximum.accumulate(a) + np.maximum.accumulate(b)
            cost = np.arange(1, len(a) + 1) * longest
        n = int(np.searchsorted(cost, budget, side="right"))
        if n == 0:
            if budget == self.max_tokens and not self._warned:
                log.warning("a pair of %d tokens exceeds data.max_tokens=%d: it forms a batch of "
                            "one (raise data.max_tokens or lower data.max_length)",
                            int(a[0] + b[0]), self.max_tokens)
                self._warned = True
            return 1, True
        if self.max_sentences is not None and n >= self.max_sentences:
            return self.max_sentences, True
        return n, n < len(a)

    def _budget_batch(self, rng: np.random.Generator) -> np.ndarray:
        """Draw candidates until the budget closes a batch (draw sizes depend on the data only)."""
        language = self.sampler.draw_language(rng) if self.sampler.mix == "per_batch" else None
        cap = self.max_sentences or self.max_tokens
        idx = np.empty(0, dtype=np.int64)
        la = lb = idx
        size = min(cap, max(8, min(256, self.max_tokens // 64)))
        while True:
            new = self.sampler.draw(rng, size, language)
            a, b = self.lengths(new)
            idx, la, lb = (np.concatenate(x) for x in ((idx, new), (la, a), (lb, b)))
            n, closed = self._fit(la, lb)
            if closed:
                return idx[:n]
            # enough for the rest of the budget at the mean cost so far, plus a margin
            spent = int(la.sum() + lb.sum())
            wanted = math.ceil(1.25 * (self.max_tokens - spent) * len(la) / spent)
            size = min(cap - len(idx), max(8, wanted))

    # ----------------------------------------------------------------- bucket pools

    def _pool_batches(self, p: int) -> list[np.ndarray]:
        """The k batches of pool p, in the order steps p*k .. p*k+k-1 take them."""
        if self._pool is not None and self._pool[0] == p:
            return self._pool[1]
        k, seed = self.bucket, self.sampler.seed
        per_batch = self.sampler.mix == "per_batch"
        if self.max_tokens is None:
            rng = np.random.default_rng([seed, p, _POOL_TAG])
            g = self.batch_size * self.world_size
            slots = [self.sampler.draw_language(rng) for _ in range(k)] if per_batch else [None]
            idx = np.concatenate([self.sampler.draw(rng, g if per_batch else k * g, lg)
                                  for lg in slots])
            group = np.repeat([lg or 0 for lg in slots], len(idx) // len(slots))
        else:  # a slot holds one budget (per_example: one slot of k), each pair counted <= N
            rng = np.random.default_rng([seed, p, _POOL_TAG, self.rank])
            slots = [self.sampler.draw_language(rng) for _ in range(k)] if per_batch else [None]
            target = self.max_tokens * (1 if per_batch else k)
            parts = [self._draw_tokens(rng, target, lg) for lg in slots]
            idx = np.concatenate(parts)
            group = np.repeat([lg or 0 for lg in slots], [len(x) for x in parts])
        a, b = self.lengths(idx)
        order = np.lexsort((rng.random(len(idx)), np.maximum(a, b), group))
        idx, a, b, group = idx[order], a[order], b[order], group[order]
        if self.max_tokens is None:  # per_batch groups hold whole batches: cuts never cross them
            batches = list(idx.reshape(k, -1))
        else:
            batches = self._cut(idx, a, b, group)
        perm = rng.permutation(len(batches))[:k]
        self._pool = (p, [batches[j] for j in perm])
        return self._pool[1]

    def _draw_tokens(self, rng: np.random.Generator, target: int,
                     language: int | None) -> np.ndarray:
        """Pairs until their tokens, each pair counted at most max_tokens, reach ``target``.

        Counting a pair at most one budget guarantees the greedy cut gives >= target/N batches.
        """
        n_max = self.max_tokens
        parts, total, drawn, size = [], 0, 0, max(8, min(1024, target // 64))
        while True:
            new = self.sampler.draw(rng, size, language)
            a, b = self.lengths(new)
            w = np.minimum(a + b, n_max)
            cum = total + np.cumsum(w)
            stop = int(np.searchsorted(cum, target, side="left"))
            if stop < len(new):
                parts.append(new[:stop + 1])
                return np.concatenate(parts)
            parts.append(new)
            total, drawn = int(cum[-1]), drawn + len(new)
            size = max(8, math.ceil(1.25 * (target - total) * drawn / max(total, 1)))

    def _cut(self, idx: np.ndarray, a: np.ndarray, b: np.ndarray,
             group: np.ndarray) -> list[np.ndarray]:
        """Budget batches over the sorted pool, never across a language group.

        A greedy cut leaves a small last batch holding the group's longest pairs; dropping it
        would bias against long pairs and keeping it gives tiny batches. So each group keeps the
        greedy number of batches c but is cut with the smallest budget (<= max_tokens) that
        still gives c batches: the batches come out about equally full.
        """
        ends = np.flatnonzero(np.diff(group)) + 1
        out: list[np.ndarray] = []
        for lo, hi in zip(np.concatenate([[0], ends]), np.concatenate([ends, [len(idx)]])):
            ga, gb = a[lo:hi], b[lo:hi]
            sizes = self._greedy(ga, gb, self.max_tokens)
            if len(sizes) > 1:  # binary search: the batch count only falls as the budget grows
                low, high = max(2, int(ga.sum() + gb.sum()) // len(sizes)), self.max_tokens
                while low < high:
                    mid = (low + high) // 2
                    if len(self._greedy(ga, gb, mid)) <= len(sizes):
                        high = mid
                    else:
                        low = mid + 1
                sizes = self._greedy(ga, gb, high)
            out += np.split(idx[lo:hi], np.cumsum(sizes)[:-1])
        return out

    def _greedy(self, a: np.ndarray, b: np.ndarray, budget: int) -> list[int]:
        """Sizes of the batches taking pairs in order until the next would exceed ``budget``."""
        window = min(budget // 2 + 1, self.max_sentences or budget)  # a pair costs >= 2 tokens
        sizes, start = [], 0
        while start < len(a):
            n, _ = self._fit(a[start:start + window], b[start:start + window], budget)
            sizes.append(n)
            start += n
        return sizes


def planner_from_config(data: Mapping[str, Any], sampler: LanguageSampler, pairs: Sequence[Pair],
                        tokenizer: Any, *, rank: int = 0, world_size: int = 1,
                        prompt: str = "") -> BatchPlanner:
    """The planner for a ``data`` config section; keys absent from older configs take defaults.

    Reads ``batch_size``, ``bucket`` (1), ``max_tokens`` (None), ``token_cost`` (``padded``),
    ``max_sentences`` (None) and ``max_length``; tokenises lazily only when bucketing or a token
    budget needs lengths.
    """
    bucket = data.get("bucket", 1)
    max_tokens = data.get("max_tokens", None)
    needs_lengths = max_tokens is not None or (isinstance(bucket, int) and bucket > 1)
    lengths = TokenLengths(pairs, tokenizer, max_length=data.get("max_length", 200),
                           prompt=prompt) if needs_lengths else None
    return BatchPlanner(sampler, data.get("batch_size", 32), bucket=bucket, max_tokens=max_tokens,
                        cost=data.get("token_cost", "padded"),
                        max_sentences=data.get("max_sentences", None), lengths=lengths,
                        rank=rank, world_size=world_size)
