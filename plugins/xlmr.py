"""XLM-RoBERTa-architecture encoder, built three ways through one code path.

* ``preset=tiny|small|medium|base|large`` with ``pretrained=null``: a fresh model of that size and a
  Unigram tokenizer trained locally on the training text (works offline).
* ``pretrained=/path/to/hf_folder``: a local Hugging Face folder (config, weights, tokenizer).
* ``pretrained=org/name``: the same loader with a hub id (needs the network unless cached).

Weights load through safetensors only and ``trust_remote_code`` is off unless asked for.
The sentence vector is the last-layer position-0 state (MEXMA); other poolings are plugins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from clse.errors import ConfigError
from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle
from clse.model.presets import PRESETS


@dataclass
class XlmrConfig:
    name: str = "xlmr"
    preset: str = "tiny"
    pretrained: str | None = None  # local folder or hub id; overrides preset
    init_from: str | None = None  # a clse run folder or checkpoint (e.g. MLM pre-training)
    tokenizer: str | None = None  # existing tokenizer (folder or hub id) instead of training one
    vocab_size: int = 8000  # of the tokenizer trained on the training text
    tokenizer_sample: int = 200_000  # training sentences the tokenizer is trained on, at most
    num_layers: int | None = None  # preset overrides
    hidden_size: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    max_positions: int = 514  # 512 tokens + XLM-R's padding offset
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0  # MEXMA trains with attention dropout off
    attn_implementation: str = "sdpa"  # of padded calls (evaluation, padding=padded)
    packing: str = "auto"  # auto | packed | padded: train on real tokens only (clse.model.packing)
    packing_backend: str = "auto"  # auto | xformers | flash_attn | sdpa
    trust_remote_code: bool = False


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
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )


def load_pretrained(path_or_name: str, *, attn_implementation: str = "sdpa",
                    trust_remote_code: bool = False, tokenizer: str | None = None) -> EncoderBundle:
    """Load an encoder and tokenizer from a local folder or a hub id (same code path)."""
    from transformers import AutoModel, AutoTokenizer

    local = Path(path_or_name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(f"{local} is not a Hugging Face model folder (no config.json)")
    ref = str(local) if local.exists() else path_or_name
    try:
        model = AutoModel.from_pretrained(ref, add_pooling_layer=False, use_safetensors=True,
                                          trust_remote_code=trust_remote_code,
                                          attn_implementation=attn_implementation)
        tok = AutoTokenizer.from_pretrained(tokenizer or ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # missing files, pickle-only weights, remote code
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        hint = (" (it ships its own code: set encoder.trust_remote_code=true only if you trust it)"
                if "trust_remote_code" in str(exc) else "")
        raise ConfigError(f"could not load encoder {path_or_name!r}{offline}: "
                          f"{str(exc).splitlines()[0]}{hint}") from exc
    return EncoderBundle(model=model, tokenizer=tok, source=ref)


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

    if cfg.init_from:
        if cfg.pretrained:
            raise ConfigError("set encoder.init_from or encoder.pretrained, not both")
        return load_pretrained(str(_checkpoint_encoder(cfg.init_from)),
                               attn_implementation=cfg.attn_implementation)
    if cfg.pretrained:
        return load_pretrained(cfg.pretrained, attn_implementation=cfg.attn_implementation,
                               trust_remote_code=cfg.trust_remote_code, tokenizer=cfg.tokenizer)
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
    return EncoderBundle(model=model, tokenizer=tokenizer, source=f"preset:{cfg.preset}")


@hookimpl
def clse_encoders():
    return [PluginSpec(kind="encoder", name="xlmr", factory=build_xlmr, config=XlmrConfig,
                       description="XLM-RoBERTa architecture: size preset + local tokenizer, "
                                   "local HF folder, or hub id")]
