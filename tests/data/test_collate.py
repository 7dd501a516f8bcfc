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


def test_duplicate_groups_join_rows_sharing_a_sentence():
    from clse.data.collate import duplicate_groups
    from clse.data.readers import Pair

    pairs = [Pair("eng_Latn", "deu_Latn", "Hello.", "Hallo."),
             Pair("eng_Latn", "fra_Latn", "Hello.", "Bonjour."),  # same English as row 0
             Pair("eng_Latn", "deu_Latn", "Thanks.", "Danke."),
             Pair("eng_Latn", "deu_Latn", "Thank you.", "Danke."),  # same German as row 2
             Pair("eng_Latn", "deu_Latn", "Bye.", "Tschüss.")]
    g = duplicate_groups(pairs).tolist()
    assert g[0] == g[1] and g[2] == g[3]
    assert len({g[0], g[2], g[4]}) == 3
