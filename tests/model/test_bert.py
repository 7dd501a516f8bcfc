"""BERT (multilingual-e5's architecture) everywhere XLM-R goes: packed attention, poolings, the
MEXMA head's tied projection, and exports that reload with identical embeddings."""

from __future__ import annotations

import copy

import pytest
import torch

from clse.interfaces import EncoderBundle, Views
from clse.model import packing
from tests.conftest import SPECIAL, VOCAB, fake_tokenizer, random_batch, tiny_bert
from tests.model.test_packing import assert_grads_close, grads


def ragged_long(batch_size=12, length=11, seed=0):
    """More packed tokens (~100) than BERT's position table (66): token-type and position ids
    must follow each sentence, not the packed row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch_size, length), generator=g)
    mask = torch.zeros(batch_size, length, dtype=torch.long)
    for row in range(batch_size):
        n = 1 + (row * 7) % length
        mask[row, :n] = 1
        ids[row, n:] = SPECIAL["pad"]
        ids[row, 0] = SPECIAL["bos"]
    return ids, mask


def test_packed_bert_equals_padded_beyond_its_position_table():
    padded = tiny_bert(layers=3, heads=4, max_positions=66)
    packed_model = copy.deepcopy(padded)
    wrapper = packing.configure_packing(packed_model, mode="packed")
    assert isinstance(wrapper, packing.PackedEncoder)
    ids, mask = ragged_long()
    assert int(mask.sum()) > padded.config.max_position_embeddings
    h1 = padded(input_ids=ids, attention_mask=mask).last_hidden_state
    h2 = wrapper(ids, mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(h1[real], h2[real], atol=1e-5)
    weights = torch.randn(h1.shape)
    (h1 * weights * mask[..., None]).sum().backward()
    (h2 * weights * mask[..., None]).sum().backward()
    assert_grads_close(grads(padded), grads(packed_model))


def test_bert_positions_start_at_zero():
    ids, mask = ragged_long(batch_size=3)
    pos = packing.own_position_ids(tiny_bert(), ids, mask)
    assert pos[1, :3].tolist() == [0, 1, 2]  # row 1 has 8 tokens


@pytest.mark.parametrize("name", ["cls", "mean", "weighted_mean", "last_token", "pooler"])
def test_every_pooling_on_bert(name):
    from clse.plugins import registry

    model = tiny_bert()
    bundle = EncoderBundle(model=model, tokenizer=fake_tokenizer())
    pooling = registry().build("pooling", {"name": name}, encoder=bundle)
    batch = random_batch()
    hidden = model(input_ids=batch.a_ids, attention_mask=batch.a_mask).last_hidden_state
    vecs = pooling(hidden, batch.a_mask)
    assert vecs.shape == (len(batch), model.config.hidden_size)
    vecs.sum().backward()
    assert model.embeddings.word_embeddings.weight.grad is not None
    if name == "pooler":  # trainable, and part of the encoder (checkpointed and exported with it)
        assert model.pooler.dense.weight.grad is not None
        assert torch.allclose(vecs.norm(dim=-1), torch.ones(len(batch)), atol=1e-5)


@pytest.mark.parametrize("tied_grads, expect_embedding_grad", [(None, False), (True, True)])
def test_mexma_on_bert_and_the_tied_projection_switch(tied_grads, expect_embedding_grad):
    """token_grads=false: the MLM loss reaches the encoder only through the sentence vector;
    the tied projection's gradient into the input embeddings follows tied_grads."""
    from clse_plugins.cls_pooling import ClsPooling
    from clse_plugins.mexma import Mexma, MexmaConfig

    model = tiny_bert()
    bundle = EncoderBundle(model=model, tokenizer=fake_tokenizer())
    objective = Mexma(MexmaConfig(head_layers=1, token_grads=False, tied_grads=tied_grads),
                      bundle)
    batch = random_batch()
    gen = torch.Generator().manual_seed(0)
    views = Views(batch, model, ClsPooling(), gen)
    out = objective(views)
    out.terms["mlm"].backward()
    emb = model.embeddings.word_embeddings.weight.grad
    # the sentence vector's path still reaches the embeddings of the tokens of the clean views;
    # the masked-only ids (the mask token) get gradient only through the tie
    mask_row = emb[SPECIAL["mask"]] if emb is not None else None
    got = mask_row is not None and bool(mask_row.abs().sum() > 0)
    assert got == expect_embedding_grad
    assert objective.head.bias.grad is not None  # the head itself always trains


def test_bert_export_round_trip_with_prompt_and_pooler(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from clse.data.tokenizer import train_tokenizer
    from clse.eval.model import EvalModel, load_eval_model
    from clse.export import export_all
    from clse_plugins.pooler_pooling import attach_pooler

    texts = [f"word{i % 17} other{i % 5} thing" for i in range(200)]
    tok = train_tokenizer(texts, vocab_size=60)
    model = tiny_bert(vocab_size=len(tok)).eval()
    attach_pooler(model)
    prompts = {"query": "query: "}
    paths = export_all(model, tok, tmp_path / "out", pooling="pooler", normalize=True,
                       prompts=prompts, default_prompt_name="query", max_seq_length=32)
    sentences = ["word3 other1 thing", "word5 thing"]
    ours = EvalModel(model, tok, "pooler", prompt="query: ").encode(sentences)
    st = SentenceTransformer(str(paths["sentence_transformers"]), device="cpu").encode(sentences)
    assert torch.allclose(torch.tensor(ours), torch.tensor(st), atol=1e-5)
    # the HF folder keeps the pooler: clse's eval of it (the pooler reloads its trained weights)
    reloaded = load_eval_model(str(paths["hf"]), pooling="pooler", prompt="query: ").encode(sentences)
    assert torch.allclose(torch.tensor(ours), torch.tensor(reloaded), atol=1e-5)
    assert AutoModel.from_pretrained(paths["hf"]).pooler is not None


def test_tlm_restarts_bert_positions_at_zero():
    """TLM on BERT: positions 0.. in each segment (XLM-R's start at padding_idx + 1)."""
    from clse_plugins.tlm import Tlm, TlmConfig

    model = tiny_bert()
    tok = fake_tokenizer()
    tok.bos_token_id, tok.eos_token_id = SPECIAL["bos"], SPECIAL["eos"]
    tlm = Tlm(TlmConfig(), EncoderBundle(model=model, tokenizer=tok))
    batch = random_batch()
    views = Views(batch, model, lambda h, m: h[:, 0], torch.Generator().manual_seed(0))
    ids, mask, pos = tlm.concat(views)
    la = int(batch.a_mask[0].sum())
    assert pos[0, 0] == 0 and pos[0, la] == 0 and pos[0, la + 1] == 1
    out = tlm(views)
    out.terms["tlm"].backward()
    assert model.embeddings.position_embeddings.weight.grad[0].abs().sum() > 0
