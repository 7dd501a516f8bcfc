"""The encoder under evaluation, whatever it came from, with what every evaluator needs.

:class:`EvalModel` is a :class:`clse.model.sentence_encoder.ClseSentenceEncoder` (``encode``:
sentence vectors, batches sorted by length) that also gives token-level states for the analyses:
hidden states of every layer (embedding layer included) and last-layer attention maps
(:meth:`EvalModel.token_batches`).

:func:`load_eval_model` opens, from one string:

* a clse run folder (``outputs/...``: its ``export/hf`` or newest checkpoint, with the run's pooling),
* an MLflow run id of a clse training run (found through its ``clse.run_dir`` tag),
* a SentenceTransformers folder (``modules.json``; sentence vectors through SentenceTransformers
  itself, so extra modules such as ``Normalize`` are honoured),
* a Hugging Face model folder (``config.json``),
* a Hugging Face hub name (needs the network, or the local HF cache).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from clse.errors import ClseError
from clse.model.sentence_encoder import ClseSentenceEncoder

log = logging.getLogger("clse.eval")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_ST_MODES = {"cls": "cls", "mean": "mean", "weightedmean": "weighted_mean",
             "lasttoken": "last_token"}  # SentenceTransformers Pooling mode -> clse pooling


@dataclass
class TokenBatch:
    """Token-level states of a batch of sentences (padding on the right).

    ``index[i]`` is the position in the caller's list of the sentence in row ``i``.
    ``hidden_states``: one (B, T, D) tensor per layer, the embedding layer first (L + 1 entries).
    ``attentions``: last-layer attention probabilities (B, H, T, T), when asked for.
    """

    index: np.ndarray  # (B,)
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    hidden_states: tuple[torch.Tensor, ...]  # L + 1 x (B, T, D), float32 on CPU
    attentions: torch.Tensor | None = None  # (B, H, T, T), float32 on CPU


class EvalModel(ClseSentenceEncoder):
    """An encoder under evaluation.

    Args:
        model: a Hugging Face encoder (``XLMRobertaModel``, ``BertModel``, ...).
        tokenizer: its tokenizer.
        pooling: a clse pooling name (``cls``, ``mean``, ``weighted_mean``, ``last_token`` or a
            plugin's) or a callable ``(hidden, mask) -> vectors``.
        name: how results name this model.
        sentence_transformer: when set, :meth:`encode` uses it (the folder's own pipeline).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: Any = "cls", *, name: str = "",
                 max_length: int = 200, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None, sentence_transformer: Any = None):
        from clse.plugins import registry

        self.pooling_name = pooling if isinstance(pooling, str) else getattr(pooling, "name", "")
        if isinstance(pooling, str):
            pooling = registry().build("pooling", {"name": pooling})
        super().__init__(model, tokenizer, pooling, max_length=max_length, device=device,
                         autocast_dtype=autocast_dtype)
        self.name = name
        self.sentence_transformer = sentence_transformer

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def encode(self, sentences: Sequence[str], batch_size: int = 64, **kwargs: Any) -> np.ndarray:
        if self.sentence_transformer is not None:
            return np.asarray(self.sentence_transformer.encode(
                list(sentences), batch_size=batch_size, show_progress_bar=False,
                convert_to_numpy=True), dtype=np.float32)
        return super().encode(sentences, batch_size=batch_size, **kwargs)

    @torch.no_grad()
    def token_batches(self, sentences: Sequence[str], batch_size: int = 32, *,
                      attentions: bool = False) -> Iterator[TokenBatch]:
        """Yield :class:`TokenBatch` es covering ``sentences`` (sorted by length)."""
        was_training = self.model.training
        self.model.eval()
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = self.tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                ids = enc["input_ids"].to(self.device)
                mask = enc["attention_mask"].to(self.device)
                out = self._forward_all(ids, mask, attentions)
                att = None
                if attentions:
                    if not out.attentions or out.attentions[-1] is None:
                        raise ClseError(f"{self.name or 'this model'} returned no attention maps "
                                        f"(its attention implementation cannot output them)")
                    att = out.attentions[-1].float().cpu()
                yield TokenBatch(idx, ids.cpu(), mask.cpu(),
                                 tuple(h.float().cpu() for h in out.hidden_states), att)
        finally:
            self.model.train(was_training)

    def _forward_all(self, ids: torch.Tensor, mask: torch.Tensor, attentions: bool):
        cfg = self.model.config
        previous = getattr(cfg, "_attn_implementation", None)
        if attentions and previous not in (None, "eager"):
            # SDPA and flash kernels never materialise the attention probabilities
            self.model.set_attn_implementation("eager")
        try:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                return self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                  output_attentions=attentions)
        finally:
            if attentions and previous not in (None, "eager"):
                self.model.set_attn_implementation(previous)


# ----------------------------------------------------------------------------- loading

def load_eval_model(spec: str, *, pooling: str | None = None, max_length: int = 200,
                    device: str = "cpu", tracking_uri: str | None = None) -> EvalModel:
    """Open ``spec`` (see the module docstring); ``pooling=None`` takes the model's own."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "modules.json").is_file():
            return _from_sentence_transformers(path, pooling, max_length, device)
        if (path / "config.json").is_file():
            return _from_hf(str(path), pooling or "cls", max_length, device, name=str(path))
        if (path / ".hydra").is_dir() or (path / "checkpoints").is_dir():
            return _from_run_dir(path, pooling, max_length, device)
        raise ClseError(f"model {spec!r} is a folder but not a clse run (no .hydra/ or "
                        f"checkpoints/), a SentenceTransformers folder (no modules.json) or a "
                        f"Hugging Face folder (no config.json)")
    if _RUN_ID.match(spec):
        return _from_run_dir(_run_dir_of(spec, tracking_uri), pooling, max_length, device)
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")) or path.exists():
        raise ClseError(f"model {spec!r}: no such folder (expected a clse run folder, an MLflow "
                        f"run id, a SentenceTransformers or Hugging Face folder, or a hub name)")
    return _from_hf(spec, pooling or "cls", max_length, device, name=spec)


def _from_hf(name_or_path: str, pooling: str, max_length: int, device: str, *,
             name: str) -> EvalModel:
    from transformers import AutoModel, AutoTokenizer

    try:
        # untrusted folders: safetensors weights only (no pickle), no code from the folder
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        kwargs = {"add_pooling_layer": False} if _has_pooler_option(name_or_path) else {}
        model = AutoModel.from_pretrained(name_or_path, attn_implementation="sdpa",
                                          use_safetensors=True, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as exc:  # missing files; refused pickle or remote code
        raise ClseError(f"cannot load model {name_or_path!r}: {exc}".splitlines()[0]
                        + " (a hub name needs the network or the local Hugging Face cache)") from exc
    return EvalModel(model.to(device).eval(), tokenizer, pooling, name=name,
                     max_length=max_length, device=device)


def _has_pooler_option(name_or_path: str) -> bool:
    from transformers import AutoConfig

    arch = (AutoConfig.from_pretrained(name_or_path, trust_remote_code=False).architectures
            or [""])[0]
    return arch.endswith("Model") and any(k in arch.lower() for k in ("bert", "roberta"))


def _from_sentence_transformers(path: Path, pooling: str | None, max_length: int,
                                device: str) -> EvalModel:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device=device, trust_remote_code=False,
                             model_kwargs={"use_safetensors": True})
    transformer = st[0]
    mode = None
    for module in st:
        cfg = getattr(module, "get_config_dict", lambda: {})()
        if "pooling_mode" in cfg or any(k.startswith("pooling_mode_") for k in cfg):
            mode = _st_pooling(cfg)
    own = _ST_MODES.get(mode or "")
    if pooling is None and own is None:
        raise ClseError(f"{path}: SentenceTransformers pooling {mode!r} has no clse equivalent; "
                        f"pass pooling=cls|mean|weighted_mean|last_token for the layer analyses")
    model = transformer.auto_model
    return EvalModel(model.eval(), st.tokenizer, pooling or own, name=str(path),
                     max_length=min(max_length, int(st.max_seq_length or max_length)),
                     device=device, sentence_transformer=st if pooling in (None, own) else None)


def _st_pooling(cfg: dict) -> str | None:
    if isinstance(cfg.get("pooling_mode"), str):
        return cfg["pooling_mode"]
    on = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    names = {"cls_token": "cls", "mean_tokens": "mean", "weightedmean_tokens": "weightedmean",
             "lasttoken": "lasttoken", "max_tokens": "max"}
    return names.get(on[0], on[0]) if len(on) == 1 else None


def _from_run_dir(run_dir: Path, pooling: str | None, max_length: int, device: str) -> EvalModel:
    from omegaconf import OmegaConf

    cfg_file = run_dir / ".hydra" / "config.yaml"
    run_pooling = OmegaConf.load(cfg_file).pooling.name if cfg_file.is_file() else "cls"
    hf = run_dir / "export" / "hf"
    if not hf.is_dir():
        from clse.train.checkpoint import find_resumable

        ckpt = find_resumable(run_dir)
        if ckpt is None:
            raise ClseError(f"run {run_dir} has neither export/hf nor an intact checkpoint")
        hf = ckpt / "encoder"
    return _from_hf(str(hf), pooling or run_pooling, max_length, device, name=str(run_dir))


def _run_dir_of(run_id: str, tracking_uri: str | None) -> Path:
    from clse.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    try:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(uri).get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - mlflow raises many types; the message says which
        raise ClseError(f"MLflow run {run_id} not found in {uri}: {exc}".splitlines()[0]) from exc
    run_dir = run.data.tags.get("clse.run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        raise ClseError(f"MLflow run {run_id} has no clse run folder on this machine "
                        f"(tag clse.run_dir = {run_dir!r})")
    return Path(run_dir)


def describe(model: EvalModel) -> dict[str, Any]:
    """What results files record about the model."""
    cfg = model.model.config
    return {"name": model.name, "pooling": model.pooling_name, "architecture":
            (cfg.architectures or [type(model.model).__name__])[0],
            "layers": int(cfg.num_hidden_layers), "hidden_size": int(cfg.hidden_size),
            "max_length": model.max_length}


def dump(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float), encoding="utf-8")
