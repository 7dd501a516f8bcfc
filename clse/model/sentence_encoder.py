"""Embed sentences with a clse encoder + pooling (evaluation-time wrapper)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from clse.interfaces import Pooling


class ClseSentenceEncoder:
    """``encode(sentences) -> (N, D) float32``; batches are sorted by length to limit padding.

    ``prompt`` is prepended to every sentence (e5: ``"query: "``), as in training."""

    def __init__(self, model: nn.Module, tokenizer, pooling: Pooling, *, max_length: int = 200,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                 prompt: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.prompt = prompt or ""

    def tokenize(self, sentences: Sequence[str]):
        """Padded ids and mask (on the device) of ``sentences`` with the prompt."""
        enc = self.tokenizer([self.prompt + s for s in sentences], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 64, **_: object) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        out: list[np.ndarray] = [None] * len(sentences)  # type: ignore[list-item]
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                ids, mask = self.tokenize([sentences[i] for i in idx])
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                    vecs = self.pooling(hidden, mask)
                vecs = vecs.float().cpu().numpy()
                for row, i in enumerate(idx):
                    out[i] = vecs[row]
        finally:
            self.model.train(was_training)
        if not sentences:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.stack(out).astype(np.float32, copy=False)
