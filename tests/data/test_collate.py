from __future__ import annotations

import torch

from clse.data.collate import Collator
from clse.data.readers import Pair
from clse.interfaces import Batch


def test_shapes_and_padding(tokenizer):
    pairs = [Pair("eng_Latn", "deu_Latn", "Hi.", "Hallo, wie geht es dir heute?"),
             Pair("eng_Latn", "fra_Latn", "This is a much longer English sentence.", "Oui.")]
    batch = Collator(tokenizer)(pairs)
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.a_lang == ["eng_Latn", "eng_Latn"] and batch.b_lang == ["deu_Latn", "fra_Latn"]
    for ids, mask, side in ((batch.a_ids, batch.a_mask, "src"), (batch.b_ids, batch.b_mask, "tgt")):
        assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
        lens = [len(tokenizer(getattr(p, side))["input_ids"]) for p in pairs]
        assert ids.shape[1] == max(lens)  # padded to the longest of this side only
        assert mask.sum(1).tolist() == lens
        assert (ids[mask == 0] == tokenizer.pad_token_id).all()
        assert (ids[:, 0] == tokenizer.cls_token_id).all()
    assert batch.a_ids.shape[1] != batch.b_ids.shape[1]


def test_truncation_keeps_eos(tokenizer):
    long = " ".join(["word"] * 500)
    batch = Collator(tokenizer, max_length=16)([Pair("eng_Latn", "deu_Latn", long, "kurz")])
    assert batch.a_ids.shape == (1, 16)
    assert batch.a_ids[0, -1].item() == tokenizer.eos_token_id
    assert batch.b_ids.shape[1] < 16


def test_text_keys_mask_rows_sharing_a_sentence_transitively():
    from clse.data.collate import text_keys
    from clse.data.readers import Pair
    from clse_plugins.contrastive import duplicate_mask

    pairs = [Pair("eng_Latn", "deu_Latn", "Hello.", "Hallo."),
             Pair("eng_Latn", "fra_Latn", "Hello.", "Bonjour."),  # same English as row 0
             Pair("eng_Latn", "deu_Latn", "Thanks.", "Danke."),
             Pair("eng_Latn", "deu_Latn", "Thank you.", "Danke."),  # same German as row 2
             Pair("eng_Latn", "fra_Latn", "Thank you.", "Merci."),  # same English as row 3
             Pair("eng_Latn", "deu_Latn", "Bye.", "Tschüss.")]
    keys = text_keys(pairs)
    assert keys.shape == (6, 2) and keys.dtype == torch.long
    assert torch.equal(keys, text_keys(pairs))  # stable (not Python's salted hash)
    vectors = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    got = duplicate_mask(vectors, vectors + 1, keys)
    want = torch.zeros(6, 6, dtype=torch.bool)
    for group in ([0, 1], [2, 3, 4]):  # 2~3 by German, 3~4 by English: 2~4 transitively
        for i in group:
            for j in group:
                want[i, j] = i != j
    assert torch.equal(got, want)
