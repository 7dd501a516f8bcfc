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
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from clse.errors import ClseError
from clse.model.sentence_encoder import ClseSentenceEncoder

log = logging.getLogger("clse.eval")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
    prompt_tokens: int = 0  # tokens of the prompt (e5's "query:") after position 0 of every row

    def prompt_mask(self) -> torch.Tensor:
        """(B, T) bool: the prompt's token positions (the same text before every sentence)."""
        mask = torch.zeros_like(self.attention_mask, dtype=torch.bool)
        mask[:, 1:1 + self.prompt_tokens] = True
        return mask & self.attention_mask.bool()


class EvalModel(ClseSentenceEncoder):
    """An encoder under evaluation.

    Args:
        model: a Hugging Face encoder (``XLMRobertaModel``, ``BertModel``, ...).
        tokenizer: its tokenizer.
        pooling: a clse pooling name (``cls``, ``mean``, ``weighted_mean``, ``last_token`` or a
            plugin's) or a callable ``(hidden, mask) -> vectors``.
        name: how results name this model.
        sentence_transformer: when set, :meth:`encode` uses it (the folder's own pipeline).
        prompt: text put before every sentence (e5: ``"query: "``).
        cache: keep each sentence's vector for later calls (off for speed measurements).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: Any = "cls", *, name: str = "",
                 max_length: int = 200, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None, sentence_transformer: Any = None,
                 prompt: str = "", cache: bool = True):
        self.pooling_name = pooling_name(pooling)
        super().__init__(model, tokenizer, build_pooling(pooling, model), max_length=max_length,
                         device=device, autocast_dtype=autocast_dtype, prompt=prompt)
        self.name = name
        self.sentence_transformer = sentence_transformer
        self.cache_vectors = cache  # off: every call encodes (speed benchmarks)
        self._cache: dict[str, np.ndarray] = {}  # sentence -> vector (the model is not trained
        # while an EvalModel lives: training builds a new one for every evaluation)

    @functools.cached_property
    def prompt_tokens(self) -> int:
        """How many tokens the prompt adds after the first special token (0 without one);
        a prompt ending in a space joins no word (Metaspace tokenizers)."""
        if not self.prompt.strip():
            return 0
        return len(self.tokenizer(self.prompt.rstrip(), add_special_tokens=False)["input_ids"])

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def encode(self, sentences: Sequence[str], batch_size: int = 64, **kwargs: Any) -> np.ndarray:
        """Sentence vectors; each distinct sentence is encoded once per :class:`EvalModel` (the
        evaluators of one ``clse eval`` share FLORES' sentences: xsim, xsim++, MTEB)."""
        if not self.cache_vectors:
            self._cache.clear()
        missing = list(dict.fromkeys(s for s in sentences if s not in self._cache))
        if missing:
            if self.sentence_transformer is not None:
                vecs = np.asarray(self.sentence_transformer.encode(
                    missing, batch_size=batch_size, show_progress_bar=False,
                    convert_to_numpy=True), dtype=np.float32)
            else:
                vecs = super().encode(missing, batch_size=batch_size, **kwargs)
            self._cache.update(zip(missing, vecs))
        if not sentences:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.stack([self._cache[s] for s in sentences])

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
                ids, mask = self.tokenize([sentences[i] for i in idx])
                out = self._forward_all(ids, mask, attentions)
                att = None
                if attentions:
                    if not out.attentions or out.attentions[-1] is None:
                        raise ClseError(f"{self.name or 'this model'} returned no attention maps "
                                        f"(its attention implementation cannot output them)")
                    att = out.attentions[-1].float().cpu()
                yield TokenBatch(idx, ids.cpu(), mask.cpu(),
                                 tuple(h.float().cpu() for h in out.hidden_states), att,
                                 prompt_tokens=self.prompt_tokens)
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

def pooling_name(pooling: Any) -> str:
    """The name of a pooling given as a name, a config (``{name: ..., ...}``) or a callable."""
    if isinstance(pooling, str):
        return pooling
    if isinstance(pooling, Mapping) or hasattr(pooling, "get"):
        return str(pooling.get("name", ""))
    return str(getattr(pooling, "name", ""))


def build_pooling(pooling: Any, model: nn.Module | None = None) -> Any:
    """A pooling callable from a name, a config with options, or a callable (kept); ``model``
    is passed to poolings that live in it (e.g. ``pooler``)."""
    from clse.interfaces import EncoderBundle
    from clse.plugins import registry

    encoder = EncoderBundle(model=model, tokenizer=None) if model is not None else None
    if isinstance(pooling, str):
        return registry().build("pooling", {"name": pooling}, encoder=encoder)
    if isinstance(pooling, Mapping) or (hasattr(pooling, "get") and not callable(pooling)):
        return registry().build("pooling", pooling, encoder=encoder)
    return pooling


def load_eval_model(spec: str, *, pooling: Any = None, prompt: str | None = None,
                    max_length: int = 200, device: str = "cpu",
                    tracking_uri: str | None = None) -> EvalModel:
    """Open ``spec`` (see the module docstring).

    ``pooling=None`` and ``prompt=None`` take the model's own (a run's config, a
    SentenceTransformers folder's modules and default prompt); ``prompt=""`` means none.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "modules.json").is_file():
            return _from_sentence_transformers(path, pooling, prompt, max_length, device)
        if (path / "config.json").is_file():
            return _from_hf(str(path), pooling or "cls", prompt or "", max_length, device,
                            name=str(path))
        if (path / ".hydra").is_dir() or (path / "checkpoints").is_dir():
            return _from_run_dir(path, pooling, prompt, max_length, device)
        raise ClseError(f"model {spec!r} is a folder but not a clse run (no .hydra/ or "
                        f"checkpoints/), a SentenceTransformers folder (no modules.json) or a "
                        f"Hugging Face folder (no config.json)")
    if _RUN_ID.match(spec):
        return _from_run_dir(_run_dir_of(spec, tracking_uri), pooling, prompt, max_length, device)
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")) or path.exists():
        raise ClseError(f"model {spec!r}: no such folder (expected a clse run folder, an MLflow "
                        f"run id, a SentenceTransformers or Hugging Face folder, or a hub name)")
    return _from_hf(spec, pooling or "cls", prompt or "", max_length, device, name=spec)


def _from_hf(name_or_path: str, pooling: Any, prompt: str, max_length: int, device: str, *,
             name: str) -> EvalModel:
    from clse.model.loader import load_encoder

    try:
        # untrusted folders: safetensors weights only (no pickle), no code from the folder
        bundle = load_encoder(name_or_path)
    except ClseError as exc:
        raise ClseError(f"cannot load model {name_or_path!r}: {exc}"
                        + (" (a hub name needs the network or the local Hugging Face cache)"
                           if not Path(name_or_path).exists() else "")) from exc
    return EvalModel(bundle.model.to(device).eval(), bundle.tokenizer, pooling, name=name,
                     max_length=max_length, device=device, prompt=prompt)


def _from_sentence_transformers(path: Path, pooling: Any, prompt: str | None, max_length: int,
                                device: str) -> EvalModel:
    """Sentence vectors through SentenceTransformers itself when the pooling and prompt asked
    for are the folder's own (so extra modules such as ``Normalize`` are honoured); token-level
    states (analyses) through clse with the same prompt."""
    from sentence_transformers import SentenceTransformer

    from clse.model.loader import model_info

    info = model_info(path)
    st = SentenceTransformer(str(path), device=device, trust_remote_code=False,
                             model_kwargs={"use_safetensors": True})
    own_pooling, own_prompt = info.pooling, info.default_prompt
    if pooling is None and own_pooling is None:
        raise ClseError(f"{path}: its SentenceTransformers pooling has no clse equivalent; pass "
                        f"pooling=cls|mean|weighted_mean|last_token for the layer analyses")
    chosen_prompt = own_prompt if prompt is None else prompt
    same = (pooling is None or pooling_name(pooling) == own_pooling) and chosen_prompt == own_prompt
    if same and not info.include_prompt and chosen_prompt:
        log.warning("%s pools without its prompt's tokens (include_prompt=false): sentence "
                    "vectors come from SentenceTransformers, layer analyses pool the prompt too",
                    path)
    model = st[0].auto_model
    return EvalModel(model.eval(), st.tokenizer, pooling or own_pooling, name=str(path),
                     max_length=min(max_length, int(st.max_seq_length or max_length)),
                     device=device, sentence_transformer=st if same else None,
                     prompt=chosen_prompt)


def _from_run_dir(run_dir: Path, pooling: Any, prompt: str | None, max_length: int,
                  device: str) -> EvalModel:
    """A clse run: its export (or newest intact checkpoint), with the run's pooling (and its
    options) and the prompt it trained with."""
    from omegaconf import OmegaConf

    cfg_file = run_dir / ".hydra" / "config.yaml"
    run_pooling: Any = "cls"
    if cfg_file.is_file():
        run_pooling = OmegaConf.to_container(OmegaConf.load(cfg_file).pooling, resolve=False)
    hf = run_dir / "export" / "hf"
    run_prompt = ""
    if hf.is_dir():
        st_dir = run_dir / "export" / "sentence_transformers"
        if (st_dir / "modules.json").is_file():
            from clse.model.loader import model_info

            run_prompt = model_info(st_dir).default_prompt
    else:
        from clse.train.checkpoint import find_resumable

        ckpt = find_resumable(run_dir)
        if ckpt is None:
            raise ClseError(f"run {run_dir} has neither export/hf nor an intact checkpoint")
        hf = ckpt / "encoder"
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        run_prompt = (state.get("prompts") or {}).get(state.get("prompt_name") or "", "")
    return _from_hf(str(hf), pooling or run_pooling, run_prompt if prompt is None else prompt,
                    max_length, device, name=str(run_dir))


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
    return {"name": model.name, "pooling": model.pooling_name, "prompt": model.prompt,
            "architecture":
            (cfg.architectures or [type(model.model).__name__])[0],
            "layers": int(cfg.num_hidden_layers), "hidden_size": int(cfg.hidden_size),
            "max_length": model.max_length}


def dump(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float), encoding="utf-8")
