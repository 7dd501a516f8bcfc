"""The small interfaces plugins implement (``typing.Protocol``: no base classes to inherit).

Data flow of one training step::

    Batch (sentences A, B, languages)
      -> Views: one encoder forward per distinct view an objective asks for (cached by key)
      -> pooling -> sentence vectors
      -> objective terms, alignment(a, b), regularizer(a), regularizer(b)
      -> weighted sum -> backward
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class EncoderBundle:
    """A Hugging Face encoder with its tokenizer (what an encoder plugin builds)."""

    model: nn.Module  # e.g. transformers.XLMRobertaModel without pooling layer
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    source: str = ""  # where it came from (preset name, folder, hub id)
    info: Any = None  # clse.model.loader.ModelInfo: how a loaded folder embeds by itself
    prompts: dict[str, str] = field(default_factory=dict)  # text prefixes by name (e5: query:)
    prompt_name: str | None = None  # the prompt both sides get in training and evaluation
    frozen: list[str] = field(default_factory=list)  # parameter names without gradients

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def prompt(self) -> str:
        """The text prepended to every sentence (``""``: none)."""
        return self.prompts.get(self.prompt_name or "", "")


class Pooling(Protocol):
    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, D) hidden states and (B, T) mask -> (B, D) sentence vectors."""


class Alignment(Protocol):
    weight: float  # the loop adds weight * loss

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """(B, D) x (B, D) sentence vectors of translations -> scalar loss."""


class Regularizer(Protocol):
    weight: float  # the loop adds weight * (loss(a) + loss(b)) / 2

    def __call__(self, x: Tensor) -> Tensor:
        """(B, D) sentence vectors -> scalar loss."""


@dataclass
class Batch:
    """A batch of translation pairs, tokenised and padded."""

    a_ids: Tensor  # (B, Ta)
    a_mask: Tensor  # (B, Ta)
    b_ids: Tensor  # (B, Tb)
    b_mask: Tensor  # (B, Tb)
    a_lang: list[str]
    b_lang: list[str]
    groups: Tensor | None = None  # (B,) ids or (B, K) keys; rows sharing one are no negatives

    def __len__(self) -> int:
        return int(self.a_ids.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        groups = None if self.groups is None else self.groups.to(device)
        return Batch(self.a_ids.to(device), self.a_mask.to(device), self.b_ids.to(device),
                     self.b_mask.to(device), self.a_lang, self.b_lang, groups)

    def side(self, side: str) -> tuple[Tensor, Tensor]:
        return (self.a_ids, self.a_mask) if side == "a" else (self.b_ids, self.b_mask)

    @property
    def real_tokens(self) -> int:
        return int(self.a_mask.sum().item() + self.b_mask.sum().item())


class Views:
    """Lazily encodes the views objectives ask for; each distinct key is encoded once per step.

    The trainer creates one ``Views`` per step. Objectives call :meth:`clean`, :meth:`sentence` or
    :meth:`encode` with their own inputs (e.g. a masked copy); they never call the encoder directly.
    """

    def __init__(self, batch: Batch, encoder: nn.Module, pooling: Pooling,
                 generator: torch.Generator):
        self.batch = batch
        self.encoder = encoder
        self.pooling = pooling
        self.generator = generator  # for masking: checkpointed with the trainer
        self._hidden: dict[str, Tensor] = {}
        self._masks: dict[str, Tensor] = {}

    def encode(self, key: str, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last-layer hidden states (B, T, D) of ``input_ids``, cached under ``key``."""
        if key not in self._hidden:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            self._hidden[key] = out.last_hidden_state
            self._masks[key] = attention_mask
        return self._hidden[key]

    def clean(self, side: str) -> Tensor:
        ids, mask = self.batch.side(side)
        return self.encode(f"clean_{side}", ids, mask)

    def sentence(self, side: str, key: str | None = None) -> Tensor:
        """Pooled sentence vectors (B, D) of the clean view of ``side`` (or of view ``key``)."""
        if key is None:
            hidden, mask = self.clean(side), self.batch.side(side)[1]
        else:
            hidden, mask = self._hidden[key], self._masks[key]
        return self.pooling(hidden, mask)

    @property
    def keys(self) -> list[str]:
        return list(self._hidden)


@dataclass
class ObjectiveOutput:
    """What an objective returns for one step.

    ``terms`` are unweighted named losses (the objective's ``weight`` scales their sum);
    ``pair`` are the sentence vectors the alignment loss and the regulariser act on
    (usually the clean vectors of A and B), or ``None`` when there is nothing to align.
    """

    terms: dict[str, Tensor]
    pair: tuple[Tensor, Tensor] | None
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    weight: float

    def modules(self) -> nn.Module | None:
        """Trainable parameters besides the encoder (e.g. an unmasking head), or None."""

    def __call__(self, views: Views) -> ObjectiveOutput: ...


class SentenceEncoder(Protocol):
    """Anything that embeds sentences: a clse model, a SentenceTransformer, ..."""

    def encode(self, sentences: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


class Evaluator(Protocol):
    def __call__(self, encoder: SentenceEncoder, split: str) -> dict[str, float]:
        """Metrics (``name -> value``) for ``encoder`` on ``split`` (``dev`` or ``devtest``)."""


EncodeFn = Callable[[Sequence[str]], np.ndarray]
