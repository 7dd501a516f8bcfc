from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import pytest
from omegaconf import OmegaConf

from clse.data.batching import BatchPlanner, TokenLengths, batch_stats, planner_from_config
from clse.data.collate import Collator
from clse.data.readers import Pair
from clse.data.sampling import LanguageSampler
from clse.errors import ConfigError

COUNTS = {"deu_Latn": 3000, "fra_Latn": 1500, "swh_Latn": 500}


@pytest.fixture(scope="module")
def corpus():
    """Pairs with FLORES-like token counts: log-normal around 30, side B a noisy ratio of A.

    swh is ~20% longer than the others, so a sort by length could separate languages.
    """
    rng = np.random.default_rng(0)
    pairs, la, lb = [], [], []
    for lg, n in COUNTS.items():
        a = np.clip(np.round(rng.lognormal(np.log(30), 0.6, n)), 3, 200)
        b = np.clip(np.round(a * rng.lognormal(0.2 if lg == "swh_Latn" else 0.0, 0.15, n)), 3, 200)
        pairs += [Pair("eng_Latn", lg, f"en {i}", f"{lg} {i}") for i in range(n)]
        la.append(a)
        lb.append(b)
    return pairs, TokenLengths.from_arrays(np.concatenate(la), np.concatenate(lb))


@pytest.fixture(scope="module")
def lang_of(corpus):
    pairs, _ = corpus
    return np.array([sorted(COUNTS).index(p.tgt_lang) for p in pairs])


def planner(corpus, seed=0, alpha=0.5, mix="per_example", **kw):
    pairs, lengths = corpus
    sampler = LanguageSampler(pairs, alpha=alpha, seed=seed, mix=mix)
    return BatchPlanner(sampler, lengths=lengths, **kw)


def cost(lengths, idx, kind):
    a, b = lengths(np.asarray(idx))
    return int(a.sum() + b.sum()) if kind == "packed" else len(a) * int(a.max() + b.max())


MODES = [dict(batch_size=16), dict(batch_size=16, bucket=8), dict(max_tokens=1024),
         dict(max_tokens=1024, bucket=4, cost="packed"), dict(batch_size=4, world_size=3, rank=1)]


@pytest.mark.parametrize("mix", ["per_example", "per_batch"])
def test_default_is_the_language_sampler_batch(corpus, mix):
    pairs, _ = corpus
    s = LanguageSampler(pairs, seed=5, mix=mix)
    for bs in (1, 32):
        p = BatchPlanner(s, bs)  # no lengths needed
        assert all(p.batch(step) == s.batch(step, bs) for step in range(50))


@pytest.mark.parametrize("mix", ["per_example", "per_batch"])
def test_vectorised_draw_keeps_the_old_batches(corpus, mix):
    """LanguageSampler.batch now goes through draw(); the stream must not have moved."""
    s = LanguageSampler(corpus[0], seed=2, mix=mix)

    def old_batch(step, bs):  # the pre-draw() implementation, verbatim
        rng = np.random.default_rng([s.seed, step])
        if s.mix == "per_batch":
            lang = np.full(bs, rng.choice(len(s._p), p=s._p))
        else:
            lang = rng.choice(len(s._p), size=bs, p=s._p)
        within = rng.integers(0, s._counts[lang])
        return [int(s._index[lg][j]) for lg, j in zip(lang, within)]

    assert all(s.batch(step, bs) == old_batch(step, bs) for step in range(30) for bs in (1, 33))


@pytest.mark.parametrize("kw", MODES)
def test_batches_are_a_pure_function_of_seed_and_step(corpus, kw):
    run = [planner(corpus, seed=7, **kw).batch(step) for step in range(40)]
    resumed = planner(corpus, seed=7, **kw)  # a fresh process resuming at step 17
    assert [resumed.batch(step) for step in range(17, 40)] == run[17:]
    shuffled = planner(corpus, seed=7, **kw)  # no hidden state: any query order
    order = np.random.default_rng(1).permutation(40)
    assert {int(s): shuffled.batch(int(s)) for s in order} == dict(enumerate(run))
    assert len({tuple(b) for b in run}) == 40  # every step differs
    assert planner(corpus, seed=8, **kw).batch(3) != run[3]
    assert all(isinstance(i, int) for b in run for i in b)


@pytest.mark.parametrize("bucket", [1, 8])
def test_ranks_take_disjoint_slices_of_the_global_batch(corpus, bucket):
    world, bs = 4, 8
    single = planner(corpus, batch_size=bs * world, bucket=bucket)
    ranks = [planner(corpus, batch_size=bs, bucket=bucket, rank=r, world_size=world)
             for r in range(world)]
    for step in range(24):
        parts = [r.batch(step) for r in ranks]
        assert all(len(x) == bs for x in parts)
        assert sum(parts, []) == single.batch(step)  # rank r holds rows [r*B, (r+1)*B)
        if bucket == 1:
            assert single.batch(step) == single.sampler.batch(step, bs * world)


def test_token_budget_ranks_draw_their_own_batches(corpus):
    ranks = [planner(corpus, max_tokens=2048, rank=r, world_size=2) for r in range(2)]
    again = planner(corpus, max_tokens=2048, rank=1, world_size=2)
    for step in range(10):
        a, b = ranks[0].batch(step), ranks[1].batch(step)
        assert a != b and b == again.batch(step)


def padding(corpus, p, steps):
    return np.mean([batch_stats(p.batch(s), corpus[1])["padding_ratio"] for s in range(steps)])


def test_bucketing_cuts_padding(corpus):
    plain = padding(corpus, planner(corpus, batch_size=32), 160)
    bucketed = padding(corpus, planner(corpus, batch_size=32, bucket=16), 160)
    assert plain > 0.4  # log-normal lengths: most of a padded batch is padding
    assert bucketed < 0.4 * plain, (plain, bucketed)
    budget = padding(corpus, planner(corpus, max_tokens=4096, bucket=16, cost="padded"), 160)
    assert budget < 0.4 * plain, (plain, budget)


def chi_square(langs, probs):
    seen, n = Counter(langs), len(langs)
    return sum((seen[i] - n * q) ** 2 / (n * q) for i, q in enumerate(probs))


@pytest.mark.parametrize("kw", [dict(batch_size=32, bucket=8), dict(max_tokens=2048, bucket=8),
                                dict(max_tokens=2048, bucket=8, cost="packed")])
def test_bucketed_language_proportions_are_the_samplers(corpus, lang_of, kw):
    p = planner(corpus, **kw)
    langs = lang_of[np.concatenate([p.batch(s) for s in range(8 * 100)])]
    probs = list(p.sampler.probabilities().values())
    assert len(langs) > 15_000
    assert chi_square(langs, probs) < 13.8, Counter(langs)  # df 2: p = 0.001


@pytest.mark.parametrize("kw", [dict(batch_size=32, bucket=16), dict(max_tokens=2048, bucket=16)])
def test_every_bucketed_batch_mixes_languages(corpus, lang_of, kw):
    p = planner(corpus, alpha=0.0, **kw)  # uniform over 3 languages, swh longer
    batches = [p.batch(s) for s in range(16 * 10)]
    n_langs = [len(set(lang_of[b])) for b in batches if len(b) >= 8]  # budget: long pairs, few
    assert len(n_langs) > 140 and min(n_langs) >= 2 and np.mean(n_langs) > 2.8


@pytest.mark.parametrize("kw", [dict(batch_size=16, bucket=8), dict(max_tokens=1024, bucket=8)])
def test_per_batch_mix_stays_one_language_when_bucketed(corpus, lang_of, kw):
    p = planner(corpus, alpha=0.0, mix="per_batch", **kw)
    langs = []
    for step in range(8 * 60):
        seen = set(lang_of[p.batch(step)])
        assert len(seen) == 1
        langs.append(seen.pop())
    assert all(abs(c / len(langs) - 1 / 3) < 0.1 for c in Counter(langs).values())


@pytest.mark.parametrize("bucket", [1, 8])
@pytest.mark.parametrize("kind", ["packed", "padded"])
def test_token_budget_is_kept_and_batches_are_full(corpus, bucket, kind):
    n = 2048
    p = planner(corpus, max_tokens=n, bucket=bucket, cost=kind)
    costs = [cost(corpus[1], p.batch(s), kind) for s in range(80)]
    assert max(costs) <= n
    assert np.mean(costs) > 0.85 * n, np.mean(costs)
    capped = planner(corpus, max_tokens=n, bucket=bucket, cost=kind, max_sentences=10)
    assert max(len(capped.batch(s)) for s in range(40)) == 10


def test_an_oversized_pair_is_a_batch_of_one(caplog):
    pairs = [Pair("eng_Latn", "deu_Latn", f"en {i}", f"de {i}") for i in range(50)]
    lengths = TokenLengths.from_arrays(np.full(50, 100), np.full(50, 90))
    p = BatchPlanner(LanguageSampler(pairs), max_tokens=150, lengths=lengths)
    with caplog.at_level(logging.WARNING, logger="clse.data.batching"):
        assert all(len(p.batch(s)) == 1 for s in range(20))
    assert len([r for r in caplog.records if "exceeds data.max_tokens" in r.message]) == 1


def test_token_lengths_are_lazy_and_match_the_collator(bundled_pairs, tokenizer):
    lengths = TokenLengths(bundled_pairs, tokenizer, max_length=16, chunk_size=7)
    idx = np.array([5, 900, 5, 11_000, 3])
    a, b = lengths(idx)
    assert lengths.computed == 4  # only what was asked for
    batch = Collator(tokenizer, max_length=16)([bundled_pairs[i] for i in idx])
    assert a.tolist() == batch.a_mask.sum(1).tolist() and b.tolist() == batch.b_mask.sum(1).tolist()
    assert a.max() <= 16 and a.dtype == np.int64

    words = TokenLengths(bundled_pairs[:100], lambda texts: [len(t.split()) + 2 for t in texts],
                         max_length=5)
    words.compute_all()
    assert words.computed == 100
    assert words([0])[0][0] == min(len(bundled_pairs[0].src.split()) + 2, 5)


def test_planner_from_config(bundled_pairs, tokenizer):
    sampler = LanguageSampler(bundled_pairs, seed=3)
    old = planner_from_config(OmegaConf.create({"batch_size": 8, "max_length": 16}), sampler,
                              bundled_pairs, tokenizer)
    assert old.lengths is None and old.batch(4) == sampler.batch(4, 8)
    data = OmegaConf.create({"batch_size": 8, "max_length": 16, "bucket": 4, "max_tokens": 256,
                             "token_cost": "packed", "max_sentences": None})
    p = planner_from_config(data, sampler, bundled_pairs, tokenizer, rank=1, world_size=2)
    assert p.bucket == 4 and p.max_tokens == 256 and p.cost == "packed" and p.rank == 1
    assert cost(p.lengths, p.batch(0), "packed") <= 256
    assert p.lengths.computed < len(bundled_pairs) // 10  # lazily tokenised


def test_batch_stats():
    lengths = TokenLengths.from_arrays([2, 4, 6], [3, 3, 9])
    s = batch_stats([0, 1], lengths)
    assert s == {"sentences": 2.0, "real_tokens": 12.0, "padded_tokens": 14.0,
                 "padding_ratio": pytest.approx(1 / 7)}


@pytest.mark.parametrize("kw, key", [
    (dict(bucket=0), "data.bucket"), (dict(bucket=2.5), "data.bucket"),
    (dict(max_tokens=1), "data.max_tokens"), (dict(max_tokens=64, cost="sum"), "data.token_cost"),
    (dict(max_tokens=64, max_sentences=0), "data.max_sentences"),
    (dict(batch_size=0), "data.batch_size"), (dict(rank=2, world_size=2), "rank"),
    (dict(rank=-1), "rank"),
])
def test_bad_options_name_their_config_key(corpus, kw, key):
    with pytest.raises(ConfigError, match=key):
        planner(corpus, **kw)


def test_lengths_are_required_and_steps_non_negative(corpus):
    sampler = LanguageSampler(corpus[0])
    with pytest.raises(ValueError, match="lengths"):
        BatchPlanner(sampler, bucket=4)
    with pytest.raises(ValueError, match="lengths"):
        BatchPlanner(sampler, lengths=TokenLengths.from_arrays([3], [3]), bucket=4)
    with pytest.raises(ValueError):
        BatchPlanner(sampler).batch(-1)


@pytest.mark.parametrize("kw", [dict(batch_size=64), dict(batch_size=64, bucket=16),
                                dict(max_tokens=4096), dict(max_tokens=4096, bucket=16)])
def test_drawing_a_batch_is_cheap(corpus, kw):
    p = planner(corpus, **kw)
    for s in range(64):  # lengths are known up front; pools get built along the way
        p.batch(s)
    t0 = time.perf_counter()
    for s in range(64, 192):
        p.batch(s)
    per_batch = (time.perf_counter() - t0) / 128
    assert per_batch < 0.01, per_batch  # typically well under 1 ms
