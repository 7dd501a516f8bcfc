"""encode_texts: chunked encoding keeps the input order; its bar obeys progress=false."""

from __future__ import annotations

import numpy as np
import pytest

from clse.errors import ClseError
from clse.eval.encode import CHUNK_BATCHES, encode_texts


class LengthEncoder:
    """A vector per sentence from its text alone (length and first character)."""

    def __init__(self):
        self.calls = 0

    def encode(self, sentences, batch_size=64):
        self.calls += 1
        return np.array([[len(s), ord(s[0])] for s in sentences], dtype=np.float32)


TEXTS = [f"{chr(97 + i % 26)}{'x' * (i * 7 % 40)}" for i in range(300)]


def test_chunks_come_back_in_the_input_order():
    enc = LengthEncoder()
    out = encode_texts(enc, TEXTS, batch_size=4, progress=True)
    assert enc.calls == -(-len(TEXTS) // (4 * CHUNK_BATCHES))  # chunked: one call per chunk
    np.testing.assert_array_equal(out, LengthEncoder().encode(TEXTS))


@pytest.mark.parametrize("progress, env, shown", [(True, None, True), (False, None, False),
                                                  (True, "1", False)])
def test_the_bar_obeys_progress_and_the_commands_switch(progress, env, shown, capsys,
                                                        monkeypatch):
    # clse train/eval progress=false sets TQDM_DISABLE: evaluators' own progress=true yields
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    encode_texts(LengthEncoder(), TEXTS, batch_size=4, progress=progress, desc="deu_Latn")
    assert ("deu_Latn" in capsys.readouterr().err) == shown


def test_a_wrong_row_count_names_the_sentences():
    class Short(LengthEncoder):
        def encode(self, sentences, batch_size=64):
            return super().encode(sentences)[:-1]

    with pytest.raises(ClseError, match=r"deu_Latn: the encoder returned .* for 300 sentences"):
        encode_texts(Short(), TEXTS, batch_size=64, progress=False, desc="deu_Latn")
