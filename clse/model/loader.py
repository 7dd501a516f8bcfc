"""The one loader of pretrained encoders: training, evaluation, export and resuming use it.

:func:`load_encoder` opens any ``AutoModel`` encoder (XLM-R, BERT, ...) with its tokenizer from

* a Hugging Face folder (``config.json``),
* a SentenceTransformers folder (``modules.json``: its Transformer module, in the root since
  sentence-transformers 6 or in ``0_Transformer/`` before; its pooling and prompts are read too),
* a hub id (needs the network, or the local Hugging Face cache).

Untrusted folders: weights load through safetensors only (no pickle) and the folder's own code
runs only with ``trust_remote_code=True``. The returned :class:`ModelInfo` says how the model
embeds by itself (pooling, normalisation, prompts) so that callers can use it, or warn when a
configured pooling differs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from clse.errors import ConfigError

log = logging.getLogger("clse.model")

# SentenceTransformers Pooling mode -> clse pooling name (same definition; tested)
ST_MODES = {"cls": "cls", "mean": "mean", "weightedmean": "weighted_mean",
            "lasttoken": "last_token"}
# config attribute names of (hidden dropout, attention dropout) by family
_DROPOUT_KEYS = (("hidden_dropout_prob", "attention_probs_dropout_prob"),  # BERT, XLM-R, ELECTRA
                 ("dropout", "attention_dropout"),  # DistilBERT, BART-style encoders
                 ("hidden_dropout", "attention_dropout"))  # e.g. Falcon/BLOOM-style configs


@dataclass
class ModelInfo:
    """How a folder embeds sentences by itself (from its SentenceTransformers files)."""

    pooling: str | None = None  # a clse pooling name, or None when the folder does not say
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    include_prompt: bool = True  # ST's Pooling option: pool the prompt's tokens too (e5: yes)
    transformer_dir: str | None = None  # the folder holding config.json (ST: its module's)

    @property
    def default_prompt(self) -> str:
        return self.prompts.get(self.default_prompt_name or "", "")


def model_info(ref: str | Path) -> ModelInfo:
    """Read a local folder's SentenceTransformers files (a plain HF folder or hub id: empty)."""
    folder = Path(ref).expanduser()
    info = ModelInfo()
    if not (folder / "modules.json").is_file():
        if (folder / "config.json").is_file():
            info.transformer_dir = str(folder)
        return info
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            path = folder / module.get("path", "")
            if kind == "Transformer" and info.transformer_dir is None:
                info.transformer_dir = str(path)
            elif kind == "Pooling":
                cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
                info.pooling = ST_MODES.get(_st_pooling_mode(cfg) or "")
                info.include_prompt = bool(cfg.get("include_prompt", True))
            elif kind == "Normalize":
                info.normalize = True
        st_cfg = folder / "config_sentence_transformers.json"
        if st_cfg.is_file():
            cfg = json.loads(st_cfg.read_text(encoding="utf-8"))
            info.prompts = {k: v for k, v in (cfg.get("prompts") or {}).items() if v}
            info.default_prompt_name = cfg.get("default_prompt_name")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{folder}: unreadable SentenceTransformers files "
                          f"(modules.json, Pooling config): {exc}") from None
    return info


def _st_pooling_mode(cfg: dict) -> str | None:
    if isinstance(cfg.get("pooling_mode"), str):  # sentence-transformers >= 6
        return cfg["pooling_mode"]
    on = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    names = {"cls_token": "cls", "mean_tokens": "mean", "weightedmean_tokens": "weightedmean",
             "lasttoken": "lasttoken", "max_tokens": "max"}
    return names.get(on[0], on[0]) if len(on) == 1 else None


def dropout_overrides(config_or_ref: Any, hidden: float | None,
                      attention: float | None) -> dict[str, float]:
    """``from_pretrained`` keywords that set a family's hidden/attention dropout (None: keep)."""
    if hidden is None and attention is None:
        return {}
    config = config_or_ref
    if isinstance(config_or_ref, (str, Path)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(config_or_ref), trust_remote_code=False)
    for hidden_key, attention_key in _DROPOUT_KEYS:
        if hasattr(config, hidden_key) and hasattr(config, attention_key):
            out = {}
            if hidden is not None:
                out[hidden_key] = float(hidden)
            if attention is not None:
                out[attention_key] = float(attention)
            return out
    raise ConfigError(f"cannot set the dropout of a {type(config).__name__} (none of "
                      f"{[k for pair in _DROPOUT_KEYS for k in pair]}): set "
                      f"encoder.hidden_dropout=null encoder.attention_dropout=null to keep its own")


def load_encoder(ref: str | Path, *, tokenizer: str | None = None,
                 attn_implementation: str = "sdpa", hidden_dropout: float | None = None,
                 attention_dropout: float | None = None, trust_remote_code: bool = False):
    """Load an encoder and its tokenizer (see the module docstring).

    Args:
        ref: a local folder (HF or SentenceTransformers) or a hub id.
        tokenizer: another tokenizer (folder or hub id) instead of the model's own.
        attn_implementation: of padded calls (``sdpa``, ``eager``).
        hidden_dropout, attention_dropout: set the model's dropout probabilities (None keeps the
            folder's; MEXMA trains with attention dropout 0).
        trust_remote_code: run code shipped with the folder (off: refuse such models).

    Returns:
        an :class:`clse.interfaces.EncoderBundle` whose ``info`` is the folder's :class:`ModelInfo`.

    Raises:
        ConfigError: a folder that is no model, missing or pickle-only weights, remote code,
            a hub id offline, or a tokenizer whose ids do not fit the embedding table.
    """
    from transformers import AutoModel, AutoTokenizer

    from clse.interfaces import EncoderBundle

    local = Path(ref).expanduser()
    info = ModelInfo()
    if local.exists():
        info = model_info(local)
        if info.transformer_dir is None:
            raise ConfigError(f"{local} is not a Hugging Face model folder (no config.json) nor a "
                              f"SentenceTransformers folder with a Transformer module")
        source = info.transformer_dir
    else:
        source = str(ref)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        overrides = dropout_overrides(config, hidden_dropout, attention_dropout)
        kwargs = {"add_pooling_layer": False} if has_pooler_option(config) else {}
        model = AutoModel.from_pretrained(source, use_safetensors=True,
                                          trust_remote_code=trust_remote_code,
                                          attn_implementation=attn_implementation,
                                          **kwargs, **overrides)
        tok = AutoTokenizer.from_pretrained(tokenizer or source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # missing files, pickle-only weights, remote code
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        hint = (" (it ships its own code: set encoder.trust_remote_code=true only if you trust it)"
                if "trust_remote_code" in str(exc) else "")
        raise ConfigError(f"could not load encoder {str(ref)!r}{offline}: "
                          f"{str(exc).splitlines()[0]}{hint}") from exc
    check_vocabulary(model, tok, str(tokenizer or ref))
    return EncoderBundle(model=model, tokenizer=tok, source=str(local if local.exists() else ref),
                         info=info)


def has_pooler_option(config: Any) -> bool:
    """Whether the model class of ``config`` takes ``add_pooling_layer`` (BERT/RoBERTa
    families): loading without the pooler avoids a randomly initialised one (a pooling can load
    it explicitly)."""
    import inspect

    from transformers import AutoModel

    cls = AutoModel._model_mapping.get(type(config), None)
    return cls is not None and "add_pooling_layer" in inspect.signature(cls.__init__).parameters


def check_vocabulary(model: nn.Module, tokenizer: Any, where: str) -> None:
    """Refuse a tokenizer that emits ids the embedding table does not have."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"tokenizer {where!r} has {len(tokenizer):,} ids but the model's "
                          f"embedding table has {rows:,} rows: ids >= {rows:,} would fail at the "
                          f"first forward (use the model's own tokenizer, or trim/resize first)")


# ----------------------------------------------------------------------------- freezing

def freeze(model: nn.Module, parts: Sequence[Any]) -> list[str]:
    """Turn off gradients of ``parts`` of an encoder; returns the frozen parameter names.

    ``parts``: ``embeddings`` (the embedding block: word, position, type, LayerNorm), an integer
    ``N`` (the first N transformer layers), or ``all``.
    """
    parts = list(parts or [])
    if not parts:
        return []
    layers = _layers(model)
    for part in parts:
        if part == "all":
            modules = [model]
        elif part == "embeddings":
            modules = [getattr(model, "embeddings", None) or model.get_input_embeddings()]
        elif not isinstance(part, bool) and (isinstance(part, int) or str(part).isdigit()):
            n = int(part)
            if not 0 <= n <= len(layers):
                raise ConfigError(f"encoder.freeze: {n} layers, but the model has {len(layers)}")
            modules = list(layers[:n])
        else:
            raise ConfigError(f"encoder.freeze entries are 'embeddings', 'all' or a number of "
                              f"layers, got {part!r}")
        for module in modules:
            for param in module.parameters():
                param.requires_grad_(False)
    names = {id(p): n for n, p in model.named_parameters()}
    frozen = [names[id(p)] for p in model.parameters() if not p.requires_grad]
    log.info("froze %d of %d parameter tensors (%s)", len(frozen),
             sum(1 for _ in model.parameters()), ", ".join(map(str, parts)))
    return frozen


def _layers(model: nn.Module) -> nn.ModuleList:
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
    if layers is None:
        layers = getattr(model, "layers", None)
    if layers is None:
        raise ConfigError(f"encoder.freeze: cannot find the transformer layers of "
                          f"{type(model).__name__}")
    return layers


# ----------------------------------------------------------------------------- prompts

def choose_prompt(info: ModelInfo | None, prompts: dict[str, str] | None,
                  name: str | None) -> tuple[dict[str, str], str | None]:
    """The prompts and the one used for both sides: the configured ones, else the folder's.

    ``prompts=None`` takes the folder's (e5: ``query: ``/``passage: ``); ``{}`` means none.
    ``name=None`` takes the folder's default prompt name.
    """
    own = info or ModelInfo()
    table = dict(own.prompts if prompts is None else prompts)
    chosen = own.default_prompt_name if name is None else (name or None)
    if chosen is not None and chosen not in table:
        raise ConfigError(f"encoder.prompt={chosen!r} is not one of the prompts "
                          f"{sorted(table) or '(none)'}; set encoder.prompts={{{chosen}: 'text'}}")
    return table, chosen


def prepare(bundle, *, prompts: dict[str, str] | None = None, prompt: str | None = None,
            freeze_parts: Sequence[Any] = ()) :
    """Apply the encoder options every source shares: prompts and frozen parts (in place)."""
    bundle.prompts, bundle.prompt_name = choose_prompt(bundle.info, prompts, prompt)
    bundle.frozen = freeze(bundle.model, freeze_parts)
    return bundle
