"""Vocabulary trimming: keep only the pieces some corpora use (``clse trim-vocab``).

multilingual-e5-small's 250k x 384 embedding table is 82% of its 118M parameters; MEXMA's tied
vocabulary projection over 250k rows and AdamW over 96M embedding weights dominate a CPU step.
The languages one trains and evaluates on use a fraction of it.

:func:`trim_vocabulary` tokenises the corpora (with the model's prompts, so ``query: `` stays),
keeps the ids that occur plus every special and added token, in their old order, and writes a
folder whose stock tokenizer emits the new ids and whose embedding table holds the kept rows.
On the corpora the trimmed model computes exactly what the original does:

* Unigram (XLM-R, e5): every piece of the original best segmentation is kept, so it is still
  the best among the kept pieces; an unknown character costs less than any kept piece, so no new
  ``<unk>`` appears.
* WordPiece (BERT): greedy longest-match picks, at each point, a piece that is kept; any longer
  kept piece was in the original vocabulary too and would have been picked there.

BPE is refused: its merges need intermediate pieces that never appear in the output.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from clse.errors import ClseError, ConfigError

log = logging.getLogger("clse.trim")


def _read_lines(files: Sequence[str | Path]) -> Iterable[str]:
    for file in files:
        path = Path(file)
        try:
            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    # one sentence per line, or a TSV of pairs: "src<TAB>tgt" or (Tatoeba
                    # Challenge) "src_lang<TAB>tgt_lang<TAB>src<TAB>tgt"
                    fields = line.rstrip("\n").split("\t")
                    yield from (f for f in (fields[2:4] if len(fields) >= 4 else fields) if f)
        except FileNotFoundError:
            raise ClseError(f"trim-vocab: corpus {path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise ClseError(f"trim-vocab: corpus {path}, line {number}: not UTF-8 "
                            f"({exc.reason})") from None


def used_ids(tokenizer, texts: Iterable[str], prompts: Sequence[str] = (),
             batch: int = 4096) -> np.ndarray:
    """Sorted ids the tokenizer emits for ``texts`` (each also with every prompt), plus every
    special and added token."""
    seen = np.zeros(len(tokenizer), dtype=bool)
    prefixes = [""] + [p for p in prompts if p]
    chunk: list[str] = []

    def flush():
        for prefix in prefixes:
            for ids in tokenizer([prefix + t for t in chunk], add_special_tokens=True)["input_ids"]:
                seen[ids] = True
        chunk.clear()

    for text in texts:
        chunk.append(text)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    for token_id in tokenizer.all_special_ids + list(tokenizer.added_tokens_decoder):
        seen[int(token_id)] = True
    return np.flatnonzero(seen)


def trimmed_tokenizer_json(data: dict, keep: np.ndarray) -> dict:
    """``tokenizer.json`` (parsed) with only the ids in ``keep``, renumbered in order."""
    new_id = {int(old): new for new, old in enumerate(keep)}
    model = data["model"]
    kind = model.get("type")
    if kind == "Unigram":
        vocab = model["vocab"]  # (added tokens such as a trailing <mask> may lie beyond it)
        model["vocab"] = [vocab[int(i)] for i in keep if int(i) < len(vocab)]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[int(model["unk_id"])]
    elif kind == "WordPiece":
        by_id = {i: piece for piece, i in model["vocab"].items()}
        model["vocab"] = {by_id[int(old)]: new for new, old in enumerate(keep) if int(old) in by_id}
    else:
        raise ConfigError(f"trim-vocab supports Unigram (XLM-R, e5) and WordPiece (BERT) "
                          f"tokenizers, not {kind}: a BPE merge needs pieces that never appear "
                          f"in its output")
    for token in data.get("added_tokens") or []:
        token["id"] = new_id[int(token["id"])]
    data["post_processor"] = _renumber_processor(data.get("post_processor"), new_id)
    return data


def _renumber_processor(proc, new_id: dict[int, int]):
    if not isinstance(proc, dict):
        return proc
    kind = proc.get("type")
    if kind == "Sequence":
        proc["processors"] = [_renumber_processor(p, new_id) for p in proc["processors"]]
    elif kind == "TemplateProcessing":
        for special in (proc.get("special_tokens") or {}).values():
            special["ids"] = [new_id[int(i)] for i in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            token, old = proc[key]
            proc[key] = [token, new_id[int(old)]]
    return proc


def trim_vocabulary(src: str | Path, out: str | Path, corpora: Sequence[str | Path], *,
                    check_lines: int = 2000) -> dict:
    """Write the trimmed copy of ``src`` to ``out`` (see the module docstring).

    Args:
        src: a Hugging Face or SentenceTransformers folder (its pooling and prompts are kept).
        out: the folder to write.
        corpora: text files (one sentence per line, or TSV pairs) whose pieces to keep.
        check_lines: lines re-tokenised by both tokenizers to check the ids map (0: skip).

    Returns:
        ``{"kept": n, "original": n, "parameters_before": n, "parameters_after": n}``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from clse.export import export_hf, export_sentence_transformers
    from clse.model.loader import load_encoder

    if not corpora:
        raise ConfigError("trim-vocab needs at least one --corpus file")
    bundle = load_encoder(src, hidden_dropout=None, attention_dropout=None)
    model, tokenizer, info = bundle.model.eval(), bundle.tokenizer, bundle.info
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{src}: trim-vocab needs a fast (tokenizers) tokenizer")
    keep = used_ids(tokenizer, _read_lines(corpora), prompts=list(info.prompts.values()))
    data = trimmed_tokenizer_json(json.loads(backend.to_str()), keep)
    new_backend = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token",
                                                      "sep_token", "pad_token", "cls_token",
                                                      "mask_token") if getattr(tokenizer, k, None)}
    new_tok = PreTrainedTokenizerFast(tokenizer_object=new_backend,
                                      model_max_length=tokenizer.model_max_length, **specials)
    before = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings()
    index = torch.as_tensor(keep, dtype=torch.long)
    new_emb = torch.nn.Embedding(len(keep), emb.embedding_dim,
                                 padding_idx=new_tok.pad_token_id)
    with torch.no_grad():
        new_emb.weight.copy_(emb.weight.index_select(0, index))
    model.set_input_embeddings(new_emb)
    model.config.vocab_size = len(keep)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        old = getattr(model.config, attr, None)
        if old is not None and int(old) in set(keep.tolist()):
            setattr(model.config, attr, int(np.searchsorted(keep, int(old))))
    after = sum(p.numel() for p in model.parameters())
    if check_lines:
        _check_ids(tokenizer, new_tok, keep, corpora, check_lines,
                   [""] + list(info.prompts.values()))
    if info.pooling is not None:  # a SentenceTransformers folder: keep its pooling and prompts
        path = export_sentence_transformers(
            model, new_tok, out, pooling=info.pooling, normalize=info.normalize,
            max_seq_length=int(new_tok.model_max_length), prompts=info.prompts,
            default_prompt_name=info.default_prompt_name)
    else:
        path = export_hf(model, new_tok, out)
    summary = {"kept": int(len(keep)), "original": int(len(tokenizer)),
               "parameters_before": int(before), "parameters_after": int(after),
               "source": str(src), "corpora": [str(c) for c in corpora]}
    (Path(path) / "clse_trim.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("trim-vocab: kept %d of %d ids; %d -> %d parameters", len(keep), len(tokenizer),
             before, after)
    return summary


def _check_ids(old_tok, new_tok, keep: np.ndarray, corpora, n: int, prefixes) -> None:
    """The trimmed tokenizer's ids are the old ones renumbered, on the first ``n`` lines."""
    lines = []
    for text in _read_lines(corpora):
        lines.append(text)
        if len(lines) >= n:
            break
    for prefix in prefixes:
        texts = [prefix + t for t in lines]
        old = old_tok(texts)["input_ids"]
        new = new_tok(texts)["input_ids"]
        for text, a, b in zip(texts, old, new):
            if keep[np.asarray(b, dtype=np.int64)].tolist() != list(a):
                raise ClseError(f"trim-vocab: the trimmed tokenizer segments {text[:60]!r} "
                                f"differently (a bug: please report it)")


def corpus_files(entries: Sequence) -> list[Path]:
    """The text files of ``encoder.vocab_from`` entries: a file, a folder (its ``.txt``/``.tsv``
    files), or ``{path: folder, languages: [...]}`` (the files named ``<language>.txt``)."""
    files: list[Path] = []
    for entry in entries:
        if isinstance(entry, (str, Path)):
            path, languages = Path(entry), None
        else:
            path, languages = Path(entry["path"]), list(entry.get("languages") or [])
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".tsv"))
            if languages is not None:
                missing = sorted(set(languages) - {p.stem for p in found})
                if missing:
                    raise ConfigError(f"encoder.vocab_from: {path} has no file for {missing}")
                found = [p for p in found if p.stem in languages]
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"encoder.vocab_from: {path}: no such file or folder")
    if not files:
        raise ConfigError("encoder.vocab_from names no corpus file")
    return files


def cached_trim(src: str | Path, entries: Sequence) -> Path:
    """``src`` trimmed to the corpora of ``entries`` in the model cache, made once and keyed by
    the source folder and the corpora's contents (``$CLSE_CACHE`` or ``~/.cache/clse``)."""
    import hashlib

    from filelock import FileLock

    from clse.paths import cache_root

    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise ConfigError(f"encoder.vocab_from needs a local model folder, got {src}")
    files = corpus_files(entries)
    h = hashlib.sha256(str(src).encode())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if (src / name).is_file():
            h.update(f"{name}:{(src / name).stat().st_size}:{(src / name).stat().st_mtime_ns}"
                     .encode())
    for file in files:
        h.update(file.name.encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())
    folder = cache_root() / "models" / f"{src.name}-trimmed-{h.hexdigest()[:12]}"
    marker = folder / "clse_trim.json"
    if marker.is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock"):  # parallel grid cells trim once
        if not marker.is_file():
            log.info("trimming %s to the vocabulary of %d corpus files into %s (once)", src,
                     len(files), folder)
            trim_vocabulary(src, folder, files)  # writes clse_trim.json last
    return folder
