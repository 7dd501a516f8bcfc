"""Helpers shared by the analysis evaluators (MEXA, token matching, CLS attention, pooling compare).

* :func:`resolve_multiway` / :func:`load_sample`: which multi-way parallel folder and languages to
  use (FLORES-200 ``<data>/flores200/<split>/`` when found, else the bundled NTREX sample, or a
  folder), the first n sentences of each language;
* :func:`pool_states`: sentence vectors of chosen layers with chosen poolings, one forward pass;
* :func:`special_token_mask`, :func:`boundary_token_mask`: which token positions are special;
* :func:`attention_entropy`: entropy (nats) of attention distributions, optionally renormalised
  over a subset of the tokens;
* :func:`token_matching`: the nearest-token analysis of MEXMA Table 9;
* :func:`write_json`, :func:`write_tsv`, :func:`new_figure`: artefacts (matplotlib without pyplot,
  so no global backend is touched).

Models are :class:`clse.eval.model.EvalModel` or anything with ``tokenizer`` and
``token_batches(sentences, batch_size, attentions=...)`` yielding
:class:`clse.eval.model.TokenBatch`. torch is imported where needed, not at module import.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from clse.errors import ClseError
from clse.paths import ENV_VAR, data_root
from clse.progress import bars_off

if TYPE_CHECKING:
    import torch

CATEGORIES = ("same_sentence", "translation", "same_language", "other")
"""Token-matching categories (MEXMA Table 9), by the sentence the matched token belongs to."""


# ----------------------------------------------------------------------------- data

def resolve_multiway(split: str, *, source: str = "auto", languages: Sequence[str] | None = None,
                     pivot: str | None = "eng_Latn", include_pivot: bool = False,
                     who: str = "evaluator") -> tuple[Path, list[str]]:
    """The folder of ``<lang>.txt`` files for ``split`` and the languages to evaluate.

    Args:
        split: FLORES-200 split (``dev`` / ``devtest``).
        source: ``auto`` (``<data>/flores200/<split>`` when found, else the bundled sample with a
            warning), ``flores200`` (required), ``bundled``, or a folder holding
            ``<split>/<lang>.txt`` or ``<lang>.txt``.
        languages: languages to evaluate; ``None``: every ``<lang>.txt`` of the folder.
        pivot: the pivot language (must exist); it is dropped from the list unless
            ``include_pivot``, in which case it comes first.
        who: the evaluator's name, for messages.
    """
    from clse.eval.flores import BUNDLED_DIR

    folder: Path | None = None
    bundled = False
    if source in ("auto", "flores200"):
        root = data_root()
        cand = root / "flores200" / split if root is not None else None
        if cand is not None and cand.is_dir():
            folder = cand
        elif source == "flores200":
            where = str(cand) if cand is not None else "no shared data folder was found"
            raise ClseError(f"{who} source=flores200 needs FLORES-200 split {split!r} ({where}): "
                            f"set {ENV_VAR}=/path/to/data, or use source=auto")
        else:
            folder, bundled = BUNDLED_DIR, True
    elif source == "bundled":
        folder, bundled = BUNDLED_DIR, True
    else:
        path = Path(source).expanduser()
        if (path / split).is_dir():
            folder = path / split
        elif path.is_dir():
            folder = path
        else:
            raise ClseError(f"{who} source {source!r} is not a folder (expected <split>/<lang>.txt "
                            f"or <lang>.txt inside it), nor 'auto', 'flores200' or 'bundled'")

    have = sorted(p.stem for p in folder.glob("*.txt"))
    if pivot is not None and pivot not in have:
        raise ClseError(f"{who}: pivot language {pivot!r} has no file in {folder} "
                        f"(it has: {', '.join(have) or 'nothing'})")
    wanted = list(dict.fromkeys(languages)) if languages is not None else have
    if bundled:
        kept = [lang for lang in wanted if lang in have]
        warnings.warn(f"{who}: FLORES-200 not found (set {ENV_VAR}); using the bundled "
                      f"200-sentence NTREX sample, split ignored, languages {kept} (numbers "
                      f"not comparable to FLORES)", stacklevel=3)
        wanted = kept
    langs = [lang for lang in wanted if lang != pivot]
    if include_pivot and pivot is not None:
        langs = [pivot, *langs]
    if not [lang for lang in langs if lang != pivot]:
        raise ClseError(f"{who}: no language to evaluate besides the pivot {pivot!r} in {folder}")
    return folder, langs


def load_sample(folder: Path, languages: Sequence[str], n: int | None) -> dict[str, list[str]]:
    """The first ``n`` sentences (all when ``None``) of each language, multi-way parallel."""
    from clse.eval.flores import load_multiway

    sentences = load_multiway(folder, languages)
    if n is not None:
        sentences = {lang: s[:n] for lang, s in sentences.items()}
    return sentences


class SplitSamples:
    """An evaluator's multi-way sentences per split, read once: ``samples(split) -> (sentences,
    languages)``. ``sentences`` holds the pivot and the evaluated languages (first
    ``max_sentences`` lines); ``languages`` are the evaluated ones (the pivot among them only
    with ``include_pivot``)."""

    def __init__(self, *, source: str, languages: Sequence[str] | None, pivot: str,
                 max_sentences: int | None, who: str, include_pivot: bool = False):
        self.options = dict(source=source, languages=languages, pivot=pivot,
                            include_pivot=include_pivot, who=who)
        self.pivot, self.max_sentences, self.include_pivot = pivot, max_sentences, include_pivot
        self._cache: dict[str, tuple[dict[str, list[str]], list[str]]] = {}

    def __call__(self, split: str) -> tuple[dict[str, list[str]], list[str]]:
        if split not in self._cache:
            folder, langs = resolve_multiway(split, **self.options)
            read = langs if self.include_pivot else [self.pivot, *langs]
            self._cache[split] = (load_sample(folder, read, self.max_sentences), langs)
        return self._cache[split]


# ----------------------------------------------------------------------------- tokens

def special_token_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special ids except ``<unk>`` (an unknown piece of real text)."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    unk = getattr(tokenizer, "unk_token_id", None)
    ids.discard(unk if unk is not None else -1)
    return ids


def special_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       tokenizer: Any) -> torch.Tensor:
    """(B, T) bool: real tokens that are special (``<s>``, ``</s>``, ``<mask>``, ...; not unk)."""
    import torch

    ids = sorted(special_token_ids(tokenizer))
    special = torch.isin(input_ids, torch.tensor(ids, dtype=input_ids.dtype)) if ids else \
        torch.zeros_like(input_ids, dtype=torch.bool)
    return special & attention_mask.bool()


def boundary_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        tokenizer: Any) -> torch.Tensor:
    """(B, T) bool: the BOS/CLS and EOS/SEP tokens of each row.

    Found by id (the tokenizer's ``bos``/``cls``/``eos``/``sep`` token ids); when the tokenizer
    names none of them, position 0 and the last real token of each row.
    """
    import torch

    mask = attention_mask.bool()
    ids = {getattr(tokenizer, f"{n}_token_id", None) for n in ("bos", "cls", "eos", "sep")}
    ids = sorted(int(i) for i in ids if i is not None)
    if ids:
        return torch.isin(input_ids, torch.tensor(ids, dtype=input_ids.dtype)) & mask
    out = torch.zeros_like(mask)
    out[:, 0] = True
    last = mask.long().cumsum(1).argmax(1)  # index of the last real token
    out[torch.arange(mask.shape[0]), last] = True
    return out & mask


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is None:
        return [str(int(i)) for i in ids]
    return [str(t) for t in convert([int(i) for i in ids])]


# ----------------------------------------------------------------------------- sentence vectors

def pool_states(model: Any, texts: Sequence[str], poolings: Mapping[str, Callable],
                layers: Sequence[int] | None = None, batch_size: int = 32,
                ) -> dict[str, np.ndarray]:
    """Sentence vectors of ``texts`` for each pooling and layer, from one forward pass per batch.

    Args:
        poolings: ``{name: pooling(hidden (B,T,D), mask (B,T)) -> (B,D)}``.
        layers: indices into the hidden states (0 = embedding layer, -1 = last); ``None``: all.

    Returns:
        ``{name: (n_layers, n, D) float32}`` in the order of ``texts``.
    """
    import torch

    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for batch in model.token_batches(list(texts), batch_size):
            states = batch.hidden_states if layers is None else \
                [batch.hidden_states[i] for i in layers]
            for name, pool in poolings.items():
                vecs = torch.stack([pool(h.float(), batch.attention_mask) for h in states])
                if name not in out:
                    out[name] = np.zeros((vecs.shape[0], len(texts), vecs.shape[-1]), np.float32)
                out[name][:, batch.index] = vecs.float().cpu().numpy()
    return out


# ----------------------------------------------------------------------------- attention

def attention_entropy(probs: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in nats of distributions over the last axis, ``-sum p log p`` (0 log 0 = 0).

    Args:
        probs: (..., T) attention probabilities (rows sum to 1 over the real tokens).
        keep: optional (..., T) bool, broadcastable: the distribution is restricted to these tokens
            and **renormalised** over them before the entropy is taken. Rows with no kept mass
            give NaN.
    """
    import torch

    p = probs.double()
    if keep is not None:
        p = p * keep.to(p.dtype)
        total = p.sum(-1, keepdim=True)
        p = torch.where(total > 0, p / torch.where(total > 0, total, torch.ones_like(total)),
                        torch.full_like(p, float("nan")))
    return -torch.special.xlogy(p, p).sum(-1)


# ----------------------------------------------------------------------------- token matching

def token_matching(model: Any, sentences: Mapping[str, Sequence[str]], *, pivot: str = "eng_Latn",
                   queries_per_sentence: int = 3, k: int = 5, seed: int = 0, layer: int = -1,
                   include_special: bool = False, batch_size: int = 32, n_examples: int = 10,
                   progress: bool = False) -> dict[str, Any]:
    """Nearest tokens of English query tokens among all tokens of all sentences (MEXMA Table 9).

    Every sentence of every language in ``sentences`` (a multi-way parallel sample; the pivot
    included) is encoded; the token vectors of layer ``layer`` are compared by cosine. From each
    pivot sentence ``queries_per_sentence`` tokens are drawn at random (seeded; all of them when
    the sentence has fewer); each query's ``k`` nearest tokens, itself excluded, are categorised
    by the sentence they belong to:

    * ``same_sentence``: the query's own sentence (another token of it);
    * ``translation``: the parallel sentence (same index) in another language;
    * ``same_language``: another sentence of the pivot language;
    * ``other``: a non-parallel sentence in another language.

    Special tokens (``<s>``, ``</s>``, ``<pad>``, ``<mask>``; not ``<unk>``) are neither queries
    nor candidates unless ``include_special`` (then they are both).

    Returns:
        ``{"topk": {cat: %}, "top1": {cat: %}, "identical_token": %, "counts": ..., "examples":
        [...], "n_queries": int, "n_candidates": int}``: ``topk`` over all k neighbours of every
        query, ``top1`` over the nearest one only; ``identical_token``: % of the k neighbours
        that are the query's own token id.
    """
    import torch
    from tqdm.auto import tqdm

    if pivot not in sentences:
        raise ClseError(f"token matching: the pivot {pivot!r} is not in the sample")
    langs = [pivot, *[lang for lang in sentences if lang != pivot]]
    tokenizer = model.tokenizer
    rng = np.random.default_rng(seed)

    def tokens_of(lang: str):
        """Yield (sentence idx (N,), position (N,), token id (N,), unit vectors (N, D))."""
        for batch in model.token_batches(list(sentences[lang]), batch_size):
            # the prompt's tokens (e5's "query:") are the same in every sentence: never matched
            mask = batch.attention_mask.bool() & ~batch.prompt_mask()
            if not include_special:
                mask = mask & ~special_token_mask(batch.input_ids, batch.attention_mask, tokenizer)
            rows, pos = mask.nonzero(as_tuple=True)
            vecs = batch.hidden_states[layer][rows, pos].float()
            vecs = vecs / vecs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sent = torch.as_tensor(np.asarray(batch.index), dtype=torch.long)[rows]
            yield sent, pos.long(), batch.input_ids[rows, pos].long(), vecs

    # the pivot first: its tokens give the queries and are candidates too
    pivot_parts = list(tokens_of(pivot))
    if not pivot_parts or sum(p[0].numel() for p in pivot_parts) == 0:
        raise ClseError("token matching: the pivot sentences have no (non-special) tokens")
    p_sent, p_pos, p_ids, p_vec = (torch.cat([p[i] for p in pivot_parts]) for i in range(4))
    order = torch.argsort(p_sent * (p_pos.max() + 1) + p_pos)  # by sentence, then position
    p_sent, p_pos, p_ids, p_vec = p_sent[order], p_pos[order], p_ids[order], p_vec[order]
    chosen: list[int] = []
    for s in torch.unique(p_sent).tolist():
        where = torch.nonzero(p_sent == s).flatten().numpy()
        take = min(queries_per_sentence, len(where))
        chosen.extend(sorted(rng.choice(where, size=take, replace=False).tolist()))
    q_idx = torch.tensor(chosen, dtype=torch.long)
    q_sent, q_pos, q_ids, q_vec = p_sent[q_idx], p_pos[q_idx], p_ids[q_idx], p_vec[q_idx]
    nq = len(chosen)

    best_val = torch.full((nq, k), -math.inf, dtype=torch.float32)
    best_meta = torch.full((nq, k, 4), -1, dtype=torch.long)  # language, sentence, position, id
    n_candidates = 0

    def merge(li: int, sent, pos, ids, vecs) -> None:
        nonlocal best_val, best_meta, n_candidates
        if vecs.shape[0] == 0:
            return
        n_candidates += int(vecs.shape[0])
        sims = q_vec @ vecs.T  # (nq, N)
        if li == 0:  # the query itself is not a candidate
            same = (sent[None, :] == q_sent[:, None]) & (pos[None, :] == q_pos[:, None])
            sims = sims.masked_fill(same, -math.inf)
        kk = min(k, sims.shape[1])
        val, j = sims.topk(kk, dim=1)
        meta = torch.stack([torch.full_like(j, li), sent[j], pos[j], ids[j]], dim=-1)
        val = torch.cat([best_val, val], dim=1)
        meta = torch.cat([best_meta, meta], dim=1)
        top, sel = val.topk(k, dim=1)
        best_val = top
        best_meta = torch.gather(meta, 1, sel[..., None].expand(-1, -1, 4))

    merge(0, p_sent, p_pos, p_ids, p_vec)
    for li, lang in enumerate(tqdm(langs[1:], desc="token matching", unit="lang",
                                   disable=bars_off(progress), leave=False), start=1):
        for part in tokens_of(lang):
            merge(li, *part)

    found = torch.isfinite(best_val)  # fewer than k candidates in a tiny sample
    same_lang = best_meta[..., 0] == 0
    same_sent = best_meta[..., 1] == q_sent[:, None]
    cat_index = torch.where(same_sent, torch.where(same_lang, 0, 1), torch.where(same_lang, 2, 3))
    counts_k = {c: int(((cat_index == i) & found).sum()) for i, c in enumerate(CATEGORIES)}
    counts_1 = {c: int(((cat_index[:, 0] == i) & found[:, 0]).sum())
                for i, c in enumerate(CATEGORIES)}
    total_k, total_1 = max(sum(counts_k.values()), 1), max(sum(counts_1.values()), 1)
    identical = int(((best_meta[..., 3] == q_ids[:, None]) & found).sum())

    examples = []
    for qi in range(min(n_examples, nq)):
        s = int(q_sent[qi])
        neigh = []
        for r in range(k):
            if not found[qi, r]:
                continue
            li, ns, npos, nid = (int(v) for v in best_meta[qi, r])
            neigh.append({"language": langs[li], "sentence": ns, "position": npos,
                          "token": token_strings(tokenizer, [nid])[0],
                          "category": CATEGORIES[int(cat_index[qi, r])],
                          "cosine": round(float(best_val[qi, r]), 6)})
        examples.append({"sentence": s, "text": sentences[pivot][s], "position": int(q_pos[qi]),
                         "token": token_strings(tokenizer, [int(q_ids[qi])])[0],
                         "neighbours": neigh})
    return {
        "topk": {c: 100.0 * v / total_k for c, v in counts_k.items()},
        "top1": {c: 100.0 * v / total_1 for c, v in counts_1.items()},
        "identical_token": 100.0 * identical / total_k,
        "counts": {"topk": counts_k, "top1": counts_1, "identical_token": identical},
        "n_queries": nq, "n_candidates": n_candidates, "k": k, "languages": langs,
        "n_sentences": len(sentences[pivot]), "examples": examples,
    }


# ----------------------------------------------------------------------------- artefacts

def write_json(path: Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=float, ensure_ascii=False)
                    + "\n", encoding="utf-8")
    return path


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    def cell(v: Any) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header), *("\t".join(cell(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_records(path: Path, rows: Sequence[Mapping[str, Any]], note: str | None = None,
                  missing: Any = 0) -> Path:
    """Dict rows as a TSV (columns in first-seen order, floats to 2 decimals, absent cells
    ``missing``), with an optional ``# note`` line first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", encoding="utf-8", newline="") as f:
        if note is not None:
            f.write(f"# {note}\n")
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", restval=missing)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v)
                             for k, v in row.items()})
    return path


def new_figure(width: float, height: float):
    """A matplotlib Figure drawn with the Agg canvas (pyplot and its global backend untouched)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # glyphs missing for some scripts in the default font
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(path, dpi=120)
    return path
