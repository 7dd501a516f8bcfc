"""Publish a trained encoder in the formats the ecosystem loads.

Two folders, neither of which needs clse to load:

* ``hf/``: a plain Hugging Face folder (safetensors weights, ``config.json``, tokenizer files)::

      XLMRobertaModel.from_pretrained(path, add_pooling_layer=False)
      AutoTokenizer.from_pretrained(path)

* ``sentence_transformers/``: a SentenceTransformers folder made only of stock modules
  (``Transformer`` + ``Pooling``, optionally ``Normalize``), so ``SentenceTransformer(path)`` gives
  the vectors clse computes (CLS = last-layer position-0 state, unnormalised, by default).

Every writer builds its folder in ``<out_dir>.tmp-XXXX`` beside the target and renames it into
place at the end, so an interrupted export never leaves a half-written model where one is expected.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from clse.errors import ConfigError
from clse.model.loader import has_pooler_option

log = logging.getLogger("clse.export")

ST_POOLING = {"cls": "cls", "mean": "mean", "weighted_mean": "weightedmean",
              "last_token": "lasttoken", "pooler": "cls"}
"""clse pooling name -> SentenceTransformers ``Pooling`` mode with the same definition (tested);
``pooler`` is CLS followed by a ``Dense(tanh)`` module holding the encoder's pooler weights."""
_CLSE_NAME = {mode: name for name, mode in ST_POOLING.items() if name != "pooler"}

_POOLING_TEXT = {
    "cls": "the last-layer hidden state of the first token (`<s>`, CLS)",
    "mean": "the mean of the last-layer hidden states over non-padding tokens",
    "weighted_mean": "the position-weighted mean of the last-layer hidden states (weights 1..T "
                     "over the non-padding tokens, MEXA)",
    "last_token": "the last-layer hidden state of the last non-padding token",
}


# --------------------------------------------------------------------------- public API

def export_hf(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save ``model`` and ``tokenizer`` as a Hugging Face folder (safetensors weights).

    Args:
        model: a ``transformers`` encoder, e.g.
            ``XLMRobertaModel(config, add_pooling_layer=False)``.
        tokenizer: its ``PreTrainedTokenizerFast``.
        out_dir: the folder to create (replaced if it exists).

    Returns:
        ``out_dir`` as a resolved path.
    """
    model = _unwrap(model)
    with _atomic_dir(out_dir) as tmp:
        _write_hf(model, tokenizer, tmp)
        _write_card(tmp, _hf_card(model, tokenizer))
    return Path(out_dir).resolve()


def export_sentence_transformers(model: Any, tokenizer: Any, out_dir: str | Path,
                                 pooling: str = "cls", max_seq_length: int = 200,
                                 normalize: bool = False, prompts: dict[str, str] | None = None,
                                 default_prompt_name: str | None = None,
                                 card: str | None = None) -> Path:
    """Save a SentenceTransformers folder of stock modules that reproduces clse's embeddings.

    The transformer is saved in the folder's root (sentence-transformers >= 6), so the folder is
    also a Hugging Face model folder (``AutoModel.from_pretrained(out_dir)``).

    Args:
        model: the encoder (see :func:`export_hf`).
        tokenizer: its tokenizer.
        out_dir: the folder to create (replaced if it exists).
        pooling: ``"cls"`` (position 0 of the last layer) or ``"mean"`` (masked mean).
        max_seq_length: truncation length in tokens, capped at what the position table holds.
        normalize: append a ``Normalize`` module (unit-length vectors).
        prompts: text prefixes by name (e5: ``{"query": "query: ", "passage": "passage: "}``),
            saved in ``config_sentence_transformers.json``.
        default_prompt_name: the prompt ``encode`` uses when none is named.
        card: the ``README.md`` text (default: a generated card).

    Returns:
        ``out_dir`` as a resolved path.
    """
    mode, model = _st_pooling_mode(pooling), _unwrap(model)
    with _atomic_dir(out_dir) as tmp:
        src = tmp / ".hf-src"
        _write_hf(model, tokenizer, src)
        _write_st(src, tokenizer, tmp, mode, max_seq_length, normalize, model, prompts=prompts,
                  default_prompt_name=default_prompt_name, dense=pooling == "pooler")
        shutil.rmtree(src)
        if card is not None:
            _write_card(tmp, card)
    return Path(out_dir).resolve()


def export_all(model: Any, tokenizer: Any, out_dir: str | Path, pooling: str = "cls",
               max_seq_length: int = 200, normalize: bool = False,
               prompts: dict[str, str] | None = None,
               default_prompt_name: str | None = None) -> dict[str, Path]:
    """Write ``out_dir/hf`` and ``out_dir/sentence_transformers``, each with a ``README.md``.

    A pooling that stock SentenceTransformers modules cannot express (a third-party plugin's)
    gets the Hugging Face folder only, with a warning: the end of a training run must not fail
    on it.

    Returns:
        ``{"hf": path, "sentence_transformers": path}`` (without the second when skipped).
    """
    model = _unwrap(model)
    mode = ST_POOLING.get(pooling)
    if mode is None:
        log.warning("pooling %r has no SentenceTransformers equivalent: exporting the Hugging "
                    "Face folder only (exportable poolings: %s)", pooling, sorted(ST_POOLING))
    with _atomic_dir(out_dir) as tmp:
        _write_hf(model, tokenizer, tmp / "hf")
        _write_card(tmp / "hf", _hf_card(model, tokenizer, pooling=pooling))
        if mode is not None:
            _write_st(tmp / "hf", tokenizer, tmp / "sentence_transformers", mode, max_seq_length,
                      normalize, model, prompts=prompts, default_prompt_name=default_prompt_name,
                      dense=pooling == "pooler")
    out = Path(out_dir).resolve()
    paths = {"hf": out / "hf"}
    if mode is not None:
        paths["sentence_transformers"] = out / "sentence_transformers"
    return paths


# --------------------------------------------------------------------------- writers

def _write_hf(model: Any, tokenizer: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    # The tokenizer must not promise more tokens than the position table holds (ST and pipelines
    # truncate at model_max_length); restore the caller's object afterwards.
    old = tokenizer.model_max_length
    tokenizer.model_max_length = min(int(old), _max_tokens(model))
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = old


def _write_st(hf_dir: Path, tokenizer: Any, folder: Path, mode: str, max_seq_length: int,
              normalize: bool, model: Any, prompts: dict[str, str] | None = None,
              default_prompt_name: str | None = None, dense: bool = False) -> None:
    """Build the pipeline with sentence-transformers' own classes from ``hf_dir`` and save it."""
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import (Normalize, Pooling,
                                                                        Transformer)
    except ImportError:  # sentence-transformers 5
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    max_len = min(int(max_seq_length), _max_tokens(model))
    # add_pooling_layer=False: no randomly initialised pooler (no missing-weights warning) on load.
    model_kwargs = {"add_pooling_layer": False} if has_pooler_option(model.config) else {}
    transformer = Transformer(str(hf_dir), model_kwargs=dict(model_kwargs), max_seq_length=max_len)
    modules = [transformer, Pooling(int(model.config.hidden_size), pooling_mode=mode)]
    if dense:  # the pooler pooling: the encoder's trained tanh(Dense(CLS)) as an ST module
        import torch

        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.modules import Dense
        except ImportError:
            from sentence_transformers.models import Dense
        pooler = getattr(model, "pooler", None)
        if pooler is None:
            raise ConfigError("pooling=pooler but the model has no pooler to export")
        d = int(model.config.hidden_size)
        modules.append(Dense(d, d, activation_function=torch.nn.Tanh(),
                             init_weight=pooler.dense.weight.detach().float().cpu().clone(),
                             init_bias=pooler.dense.bias.detach().float().cpu().clone()))
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu", prompts=dict(prompts or {}),
                             default_prompt_name=default_prompt_name)
    folder.mkdir(parents=True, exist_ok=True)
    st.save(str(folder), create_model_card=False)

    # ST saves neither model_kwargs nor max_seq_length in sentence_bert_config.json, and its
    # re-saved tokenizer_config.json carries loader flags (local_files_only, is_local): write the
    # tokenizer files from the original tokenizer and record the two loading options.
    old = tokenizer.model_max_length
    tokenizer.model_max_length = max_len
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = old
    cfg_path = folder / "sentence_bert_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    cfg["max_seq_length"] = max_len
    cfg.setdefault("do_lower_case", False)
    if model_kwargs:
        cfg["model_kwargs"] = model_kwargs
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    _write_card(folder, _st_card(model, mode, max_len, normalize, prompts, default_prompt_name,
                                 dense))


# --------------------------------------------------------------------------- helpers

@contextmanager
def _atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh ``<out_dir>.tmp-XXXX`` folder; on success it replaces ``out_dir``."""
    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _st_pooling_mode(pooling: str) -> str:
    try:
        return ST_POOLING[pooling]
    except KeyError:
        raise ConfigError(f"cannot export pooling {pooling!r} with stock SentenceTransformers "
                          f"modules; exportable: {sorted(ST_POOLING)}") from None


def _unwrap(model: Any) -> Any:
    """The Hugging Face model inside DDP/FSDP (``.module``) or torch.compile (``._orig_mod``)."""
    while not hasattr(model, "save_pretrained"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"cannot export {type(model).__name__}: not a Hugging Face model")
        model = inner
    return model


def _max_tokens(model: Any) -> int:
    """Longest input (special tokens included) the position table holds."""
    cfg = model.config
    n = int(getattr(cfg, "max_position_embeddings", 10**9))
    if getattr(cfg, "model_type", "") in {"xlm-roberta", "roberta", "camembert", "xlm-roberta-xl"}:
        n -= int(cfg.pad_token_id) + 1  # RoBERTa positions start after padding_idx
    return n


def _clse_version() -> str:
    from clse import __version__

    return __version__


def _write_card(folder: Path, text: str) -> None:
    (folder / "README.md").write_text(text, encoding="utf-8")


def _hf_card(model: Any, tokenizer: Any, pooling: str = "cls") -> str:
    cls_name = type(model).__name__
    extra = ", add_pooling_layer=False" if has_pooler_option(model.config) else ""
    pool_code = {
        "cls": "emb = out.last_hidden_state[:, 0]",
        "mean": ("m = batch[\"attention_mask\"].unsqueeze(-1).to(out.last_hidden_state.dtype)\n"
                 "emb = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)"),
        "weighted_mean": ("m = batch[\"attention_mask\"]\n"
                          "w = (m.cumsum(1) * m).unsqueeze(-1).to(out.last_hidden_state.dtype)\n"
                          "emb = (out.last_hidden_state * w).sum(1) / w.sum(1)"),
        "last_token": ("last = batch[\"attention_mask\"].sum(1) - 1  # right padding\n"
                       "emb = out.last_hidden_state[torch.arange(len(last)), last]"),
    }.get(pooling, f"# pool out.last_hidden_state with the clse pooling plugin {pooling!r}")
    return f"""---
library_name: transformers
tags: [clse, sentence-embeddings, cross-lingual]
---
# Cross-lingual sentence encoder (Hugging Face format)

Exported by clse {_clse_version()}. Architecture: `{cls_name}`, hidden size
{model.config.hidden_size}, {model.config.num_hidden_layers} layers, vocabulary
{model.config.vocab_size}. Sentence vectors are {_POOLING_TEXT.get(pooling, f"pooled by the clse plugin `{pooling}`")} (not normalised).

```python
import torch
from transformers import AutoTokenizer, {cls_name}

tokenizer = AutoTokenizer.from_pretrained("PATH")
model = {cls_name}.from_pretrained("PATH"{extra}).eval()
batch = tokenizer(["Hello world", "Hallo Welt"], padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    out = model(**batch)
{pool_code}
```

The folder has no pooler weights: load it with `add_pooling_layer=False` (plain `AutoModel`
adds a randomly initialised pooler, which the sentence vectors above do not use).
"""


def _st_card(model: Any, mode: str, max_len: int, normalize: bool,
             prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
             dense: bool = False) -> str:
    norm = (" through the pooler (tanh(Dense(CLS)))" if dense else "") + (
        " and L2-normalised" if normalize else " (not normalised)")
    if prompts:
        listed = ", ".join(f"`{k}`: `{v!r}`" for k, v in prompts.items())
        norm += (f". Texts get a prompt prefix ({listed}; default "
                 f"{default_prompt_name or 'none'})")
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [clse, sentence-transformers, sentence-embeddings, cross-lingual]
---
# Cross-lingual sentence encoder (SentenceTransformers format)

Exported by clse {_clse_version()}; loads with stock sentence-transformers modules only
(`Transformer` -> `Pooling(pooling_mode="{mode}")`{" -> `Dense(tanh)`" if dense else ""}{" -> `Normalize`" if normalize else ""}), no clse
needed. Sentence vectors are {_POOLING_TEXT[_CLSE_NAME[mode]]}{norm}; inputs are truncated to {max_len} tokens.
Architecture: `{type(model).__name__}`, hidden size {model.config.hidden_size},
{model.config.num_hidden_layers} layers.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("PATH")
emb = model.encode(["Hello world", "Hallo Welt"])
```
"""
