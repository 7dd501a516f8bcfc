"""Build the components of a run from its resolved config (one place that knows the config layout)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from clse.errors import ConfigError
from clse.interfaces import EncoderBundle
from clse.plugins import registry

log = logging.getLogger("clse.train")


@dataclass
class Components:
    encoder: EncoderBundle
    pooling: Any
    objective: Any
    alignment: Any
    regularizer: Any
    evaluators: dict[str, Any]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_pairs(data_cfg: DictConfig):
    """All training pairs of the configured corpora (the bundled sample when none is given)."""
    from clse.data.default_corpus import default_corpus_path
    from clse.data.readers import load_corpus

    corpora = OmegaConf.to_container(data_cfg.corpora, resolve=True) or []
    if not corpora:
        corpora = [{"kind": "tsv", "path": str(default_corpus_path())}]
    pairs = []
    for spec in corpora:
        pairs.extend(load_corpus(spec))
    if not pairs:
        raise ConfigError("the training corpora are empty (data.corpora)")
    return pairs


def tokenizer_texts(pairs, limit: int, seed: int) -> Iterator[str]:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(pairs))[: max(1, limit // 2)]
    for i in idx:
        yield pairs[i].src
        yield pairs[i].tgt


def build_components(cfg: DictConfig, pairs, run_dir: Path,
                     encoder: EncoderBundle | None = None) -> Components:
    reg = registry()
    if encoder is None:
        limit = int(cfg.encoder.get("tokenizer_sample", 200_000))
        encoder = reg.build("encoder", cfg.encoder,
                            texts=lambda: tokenizer_texts(pairs, limit, cfg.seed), work_dir=run_dir)
    own = getattr(encoder.info, "pooling", None)  # how a loaded SentenceTransformers folder pools
    if own is not None and own != cfg.pooling.name:
        log.warning("encoder %s pools with %s by itself, this run with pooling=%s: set "
                    "pooling=%s to start from the vectors it was trained for", encoder.source, own,
                    cfg.pooling.name, own)
    pooling = reg.build("pooling", cfg.pooling, encoder=encoder)
    objective = reg.build("objective", cfg.objective, encoder=encoder)
    alignment = reg.build("alignment", cfg.alignment)
    regularizer = reg.build("regularizer", cfg.regularizer)
    if getattr(objective, "needs_alignment", False) and alignment.weight == 0:
        raise ConfigError(f"objective={cfg.objective.name} has no loss of its own, so "
                          f"alignment={cfg.alignment.name} (weight 0) leaves nothing to train: "
                          f"choose an alignment loss, e.g. alignment=contrastive")
    evaluators = {key: reg.build("evaluator", ev_cfg)
                  for key, ev_cfg in (cfg.eval.get("evaluators") or {}).items()}
    return Components(encoder, pooling, objective, alignment, regularizer, evaluators)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means fp32 (autocast off)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None  # CPU default: fp32, bit-reproducible
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ConfigError(f"trainer.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if table[precision] is torch.float16 and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device (use bf16 on CPU)")
    return table[precision]
