"""BERT-pooler pooling (LaBSE's sentence vector): a trainable dense layer and tanh on the CLS state.

    s = normalize(tanh(W · h[:, 0] + b))          (LaBSE, Feng et al. 2022; its TF-Hub model and
                                                    sentence-transformers port: CLS -> Dense(tanh)
                                                    -> Normalize)

The dense layer is the encoder's own pooler (``model.pooler``: ``BertPooler`` /
``XLMRobertaPooler``, the same ``dense`` + tanh). clse loads encoders without it (most poolings do
not use it), so this plugin attaches one: initialised from the pooler weights of the folder the
model came from (``pooler.dense.*`` in its safetensors: a pretrained BERT/LaBSE, or a clse
checkpoint trained with this pooling), else randomly (normal(0, initializer_range), zero bias).
Attached to the encoder, it is trained, checkpointed and exported with it (the
SentenceTransformers export gets a ``Dense(tanh)`` module with its weights).

Shapes: ``hidden``: (B, T, D), ``attention_mask``: (B, T) -> (B, D).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle

log = logging.getLogger("clse.pooling")


@dataclass
class PoolerPoolingConfig:
    name: str = "pooler"
    normalize: bool = True  # LaBSE L2-normalises the pooler output


class DensePooler(nn.Module):
    """``tanh(dense(h[:, 0]))`` with the parameter names of transformers' BERT pooler."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


def pooler_weights(name_or_path: str) -> dict[str, Tensor] | None:
    """``{"weight", "bias"}`` of the pooler dense layer saved in a model folder (or the local
    hub cache), or None when it has none."""
    from safetensors import safe_open

    files: list[Path] = []
    folder = Path(name_or_path).expanduser() if name_or_path else None
    if folder is not None and folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
    elif name_or_path:
        try:
            from transformers.utils import cached_file

            found = cached_file(name_or_path, "model.safetensors", local_files_only=True,
                                _raise_exceptions_for_missing_entries=False)
            files = [Path(found)] if found else []
        except Exception:  # noqa: BLE001 - no cache entry: no pretrained pooler
            files = []
    for file in files:
        with safe_open(str(file), "pt") as weights:
            keys = [k for k in weights.keys() if k.endswith("pooler.dense.weight")]
            if keys:
                prefix = keys[0][: -len("weight")]
                return {"weight": weights.get_tensor(prefix + "weight"),
                        "bias": weights.get_tensor(prefix + "bias")}
    return None


def attach_pooler(model: nn.Module) -> nn.Module:
    """``model.pooler``, created (and initialised as the module docstring says) if absent."""
    if getattr(model, "pooler", None) is not None:
        return model.pooler
    cfg = model.config
    pooler = DensePooler(int(cfg.hidden_size))
    saved = pooler_weights(getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", ""))
    if saved is not None:
        with torch.no_grad():
            pooler.dense.weight.copy_(saved["weight"])
            pooler.dense.bias.copy_(saved["bias"])
        log.info("pooler: loaded the dense layer of %s", model.name_or_path)
    else:
        nn.init.normal_(pooler.dense.weight, std=float(getattr(cfg, "initializer_range", 0.02)))
        nn.init.zeros_(pooler.dense.bias)
        log.info("pooler: no pretrained pooler weights found: initialised randomly")
    param = next(model.parameters())
    model.pooler = pooler.to(device=param.device, dtype=param.dtype)
    return model.pooler


class PoolerPooling:
    """A ``Pooling`` through the encoder's pooler (a reference: the encoder owns its weights)."""

    name = "pooler"

    def __init__(self, pooler: nn.Module, normalize: bool = True):
        self.pooler = pooler
        self.normalize = normalize

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.pooler(hidden)  # (B, D)
        return F.normalize(out, dim=-1) if self.normalize else out


def build(cfg: PoolerPoolingConfig, encoder: EncoderBundle | nn.Module) -> PoolerPooling:
    model = encoder.model if isinstance(encoder, EncoderBundle) else encoder
    return PoolerPooling(attach_pooler(model), normalize=cfg.normalize)


@hookimpl
def clse_poolings() -> list[PluginSpec]:
    return [PluginSpec(kind="pooling", name="pooler", factory=build, config=PoolerPoolingConfig,
                       takes_encoder=True,
                       description="trainable BERT pooler tanh(Dense(CLS)), L2-normalised "
                                   "(LaBSE); initialised from the model's pooler weights")]
