"""Packed attention: an encoder computes on the real tokens of a batch only.

A padded batch of FLORES-like sentences is ~75% padding, and every linear layer (most of a
transformer's FLOPs) computes on it. Packing concatenates the batch's real tokens into one row
``(1, N)``; the linear layers then see N rows, and attention is confined to each sentence by an
attention function registered with transformers' ``AttentionInterface`` under the name
``clse_packed``, which reads the sentences' boundaries (``cu_seq_lens_q``, the keyword transformers
already passes through every layer to varlen kernels). Position ids are each sentence's own, as
the model would number it alone, so a packed forward equals the padded one (tested).

Backends, chosen per call:

* ``xformers``: ``BlockDiagonalMask`` + ``memory_efficient_attention`` (CUDA, the ``gpu`` extra);
* ``flash_attn``: ``flash_attn_varlen_func`` (CUDA, fp16/bf16, when installed);
* ``sdpa``: the packed rows are scattered into a (B, H, T_max, d) block per attention call and
  PyTorch SDPA runs with a key-padding mask; only attention (a small share of the FLOPs at these
  lengths) sees padding. Works on every device and trains on CPU, where ``flex_attention`` has no
  backward and ``position_ids``-only packing leaks attention across sentences (DESIGN.md §7).

Calls without boundaries (a padded batch, e.g. evaluation) fall back to transformers' SDPA, so a
model switched to ``clse_packed`` still accepts ordinary padded input.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTN_NAME = "clse_packed"
BACKENDS = ("auto", "xformers", "flash_attn", "sdpa")


@dataclass
class Packing:
    """Where the real tokens of a padded (B, T) batch go in the packed row, and the boundaries."""

    mask: Tensor  # (B, T) bool: real tokens
    index: Tensor  # (N,) flat positions of the real tokens in the (B*T) padded layout
    lengths: Tensor  # (B,) real tokens per sentence (on the CPU)
    cu_seqlens: Tensor  # (B+1,) int32 offsets of the sentences in the packed row
    max_len: int

    @classmethod
    def from_mask(cls, attention_mask: Tensor) -> "Packing":
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        if not bool((mask == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all()):
            raise ValueError("packing needs right-padded rows (real tokens first, then padding)")
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        return cls(mask, mask.flatten().nonzero().squeeze(1), lengths.cpu(), cu,
                   int(lengths.max()) if lengths.numel() else 0)

    @property
    def num_tokens(self) -> int:
        return int(self.index.numel())

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (1, N, ...): the real tokens, sentence after sentence."""
        return x.flatten(0, 1).index_select(0, self.index).unsqueeze(0)

    def unpack(self, x: Tensor) -> Tensor:
        """(1, N, D) -> (B, T, D) with zeros at padding (differentiable)."""
        b, t = self.mask.shape
        out = x.new_zeros(b * t, *x.shape[2:])
        return out.index_copy(0, self.index, x[0]).view(b, t, *x.shape[2:])

    def attention_kwargs(self) -> dict[str, Any]:
        """The keywords transformers passes through every layer to the attention function."""
        return {"cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens,
                "max_length_q": self.max_len, "max_length_k": self.max_len}


def position_offsets(model: nn.Module) -> tuple[int, int]:
    """``(first, padding)``: the position id of a sentence's first token and of padding, as
    ``model`` numbers them (RoBERTa/XLM-R: ``padding_idx + 1`` and ``padding_idx``; BERT-like: 0)."""
    embeddings = getattr(model, "embeddings", None)
    if (getattr(embeddings, "create_position_ids_from_input_ids", None) is not None
            and getattr(embeddings, "padding_idx", None) is not None):
        return int(embeddings.padding_idx) + 1, int(embeddings.padding_idx)
    return 0, 0


def own_position_ids(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T) position ids as ``model`` numbers each padded row alone (RoBERTa/XLM-R: from
    ``padding_idx + 1``; BERT-like: from 0)."""
    embeddings = getattr(model, "embeddings", None)
    first, _ = position_offsets(model)
    if first:
        return embeddings.create_position_ids_from_input_ids(input_ids, embeddings.padding_idx)
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


# --------------------------------------------------------------------------- attention backends
@functools.lru_cache(maxsize=None)
def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def choose_backend(device: torch.device, dtype: torch.dtype, requested: str = "auto") -> str:
    """The fastest available backend for ``device`` and ``dtype`` (``requested`` unless auto)."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown packed attention backend {requested!r}; expected {BACKENDS}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        if _has("xformers"):
            return "xformers"
        if _has("flash_attn") and dtype in (torch.float16, torch.bfloat16):
            return "flash_attn"
    return "sdpa"


_backend_override: str = "auto"  # set by enable_packing (one per process: the trainer's choice)


def _xformers(q: Tensor, k: Tensor, v: Tensor, lengths: list[int], dropout: float,
              scaling: float) -> Tensor:
    from xformers.ops import fmha

    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(lengths)
    # (1, H, N, d) -> (1, N, H, d), xformers' layout, which is also the output layout wanted
    return fmha.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_bias=bias, p=dropout, scale=scaling)


def _flash(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, dropout: float,
           scaling: float) -> Tensor:
    from flash_attn import flash_attn_varlen_func

    out = flash_attn_varlen_func(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                 cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=scaling)
    return out.unsqueeze(0)  # (1, N, H, d)


def _sdpa_blocks(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, dropout: float,
                 scaling: float) -> Tensor:
    """Scatter the packed rows into a (B, H, T_max, d) block, SDPA with a key mask, gather back."""
    n, batch = q.shape[2], cu.numel() - 1
    lengths = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(batch, device=q.device), lengths.long(),
                                  output_size=n)
    offset = torch.arange(n, device=q.device) - cu[:-1].long()[seq]
    slot = seq * max_len + offset  # each packed row's place in the (B * T_max) layout

    def block(x: Tensor) -> Tensor:  # (1, H, N, d) -> (B, H, T_max, d)
        h, d = x.shape[1], x.shape[3]
        out = x.new_zeros(batch * max_len, h, d)
        out = out.index_copy(0, slot, x[0].transpose(0, 1))
        return out.view(batch, max_len, h, d).transpose(1, 2)

    keep = (torch.arange(max_len, device=q.device) < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(block(q), block(k), block(v), attn_mask=keep,
                                         dropout_p=dropout, scale=scaling)  # (B, H, T_max, d)
    out = out.transpose(1, 2).reshape(batch * max_len, *out.shape[1:2], out.shape[3])
    return out.index_select(0, slot).unsqueeze(0)  # (1, N, H, d)


def packed_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                     attention_mask: Tensor | None, dropout: float = 0.0,
                     scaling: float | None = None, cu_seq_lens_q: Tensor | None = None,
                     max_length_q: int | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers attention function: ``query`` etc. (1, H, N, d) -> output (1, N, H, d)."""
    if cu_seq_lens_q is None:  # an ordinary padded call
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if getattr(module, "is_causal", False):
        raise NotImplementedError("clse_packed attention is bidirectional (encoders only)")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    backend = choose_backend(query.device, query.dtype, _backend_override)
    if backend == "xformers":
        lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
        return _xformers(query, key, value, lengths, dropout, scaling), None
    if backend == "flash_attn":
        return _flash(query, key, value, cu_seq_lens_q, int(max_length_q), dropout, scaling), None
    return _sdpa_blocks(query, key, value, cu_seq_lens_q, int(max_length_q), dropout, scaling), None


@functools.lru_cache(maxsize=None)
def register() -> str:
    """Register ``clse_packed`` with transformers (attention and mask functions); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)  # padded calls: SDPA's mask
    return ATTN_NAME


def supports_packing(model: nn.Module) -> bool:
    """Whether ``model`` routes attention through transformers' interface and takes position ids."""
    config = getattr(model, "config", None)
    return (config is not None and not getattr(config, "is_decoder", False)
            and getattr(model, "_supports_attention_backend", False))


def hf_configs(modules: tuple[nn.Module | None, ...]) -> list:
    """The transformers configs of ``modules`` and their submodules (each once)."""
    from transformers import PretrainedConfig

    found: dict[int, PretrainedConfig] = {}
    for module in modules:
        for sub in module.modules() if module is not None else ():
            config = getattr(sub, "config", None)
            if isinstance(config, PretrainedConfig):
                found.setdefault(id(config), config)
    return list(found.values())


def enable_packing(*modules: nn.Module | None, backend: str = "auto") -> None:
    """Route the attention of ``modules`` (the encoder, and objective modules built on
    transformers layers, like the MEXMA head) through ``clse_packed``."""
    global _backend_override
    if backend not in BACKENDS:
        raise ValueError(f"unknown packed attention backend {backend!r}; expected {BACKENDS}")
    _backend_override = backend
    name = register()
    for config in hf_configs(modules):
        config._attn_implementation = name


def disable_packing(*modules: nn.Module | None, implementation: str = "sdpa") -> None:
    """Back to a stock implementation."""
    for config in hf_configs(modules):
        if config._attn_implementation == ATTN_NAME:
            config._attn_implementation = implementation


def is_packed(module: nn.Module) -> bool:
    return getattr(getattr(module, "config", None), "_attn_implementation", None) == ATTN_NAME


class PackedEncoder(nn.Module):
    """Wraps an encoder so that padded calls compute packed: ``(B, T)`` in, ``(B, T, D)`` out.

    Objectives and ``Views`` keep their padded tensors; only the encoder's inner computation is
    packed. ``position_ids`` (B, T), when given (TLM restarts them), are packed with the tokens.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not is_packed(model):
            raise ValueError("call enable_packing(model) first")
        self.model = model

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None,
                **kwargs: Any):
        from transformers.modeling_outputs import BaseModelOutput

        packing = Packing.from_mask(attention_mask)
        if position_ids is None:
            position_ids = own_position_ids(self.model, input_ids, attention_mask)
        out = self.model(input_ids=packing.pack(input_ids), position_ids=packing.pack(position_ids),
                         **packing.attention_kwargs(), **kwargs)
        return BaseModelOutput(last_hidden_state=packing.unpack(out.last_hidden_state))



MODES = ("auto", "packed", "padded")


def configure_packing(model: nn.Module, *others: nn.Module | None, mode: str = "auto",
                      backend: str = "auto") -> nn.Module:
    """What a trainer calls: the module its views should call (packed wrapper or ``model``).

    ``mode=auto`` packs every model that supports it; ``packed`` insists (an error names the
    model otherwise); ``padded`` keeps the stock attention.
    """
    from clse.errors import ConfigError

    if mode not in MODES:
        raise ConfigError(f"encoder.packing must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"encoder.packing_backend must be one of {BACKENDS}, got {backend!r}")
    if mode == "padded" or (mode == "auto" and not supports_packing(model)):
        return model
    if not supports_packing(model):
        raise ConfigError(f"encoder.packing=packed: {type(model).__name__} does not route attention "
                          "through transformers' AttentionInterface; use encoder.packing=padded")
    enable_packing(model, *others, backend=backend)
    return PackedEncoder(model)


def describe(forward_model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> str:
    """``packed:<backend>`` or ``padded:<attn implementation>`` (an MLflow tag)."""
    if isinstance(forward_model, PackedEncoder):
        return f"packed:{choose_backend(device, dtype or torch.float32, _backend_override)}"
    return f"padded:{getattr(forward_model.config, '_attn_implementation', '?')}"
