"""Time the default `clse eval` xsim suite: 80 X->eng directions, FLORES-200 devtest (81 languages).

    CLSE_DATA=/path/to/data python benchmarks/eval_speed.py                 # tiny preset, 2 threads
    CLSE_DATA=/path/to/data python benchmarks/eval_speed.py --preset small --threads 4
    CLSE_DATA=/path/to/data python benchmarks/eval_speed.py --model outputs/2026-11-23/12-00-00

The encoder is an XLM-R-shaped model of a clse size preset with random weights (speed does not
depend on the weights) and a Unigram tokenizer trained on FLORES-200 *dev* (all 81 languages, as
a multilingual tokenizer would cover them; `--tokenizer DIR` reuses one, e.g. a run's
`tokenizer/`), or any model `clse eval` can open (`--model`). The evaluator is the one
`configs/eval/xsim.yaml` configures (same 80 languages), run through `EvalModel.encode` (batches
sorted by length) and faiss. Prints the wall time split into encoding and search, tokens per
second, the thread count and the machine's load average (other processes share the CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def suite_languages() -> list[str]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "configs" / "eval" / "xsim.yaml")
    return list(cfg.evaluators.xsim.languages)


def build_model(args, data: Path):
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from clse.data.tokenizer import load_tokenizer, train_tokenizer
    from clse.eval.model import EvalModel, load_eval_model
    from clse.model.presets import PRESETS

    if args.model:
        model = load_eval_model(args.model, max_length=args.max_length)
        model.cache_vectors = False  # time every encode call
        return model, "0 s (given)"
    start = time.perf_counter()
    cache = Path(tempfile.gettempdir()) / f"clse-bench-tokenizer-{args.vocab_size}"
    if args.tokenizer or (cache / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(args.tokenizer or cache)
        how = f"loaded from {args.tokenizer or cache}"
    else:  # 150 dev lines per language: every script is covered, training stays under a minute
        texts = [line for path in sorted((data / "flores200" / "dev").glob("*.txt"))
                 for line in path.read_text(encoding="utf-8").splitlines()[:150]]
        tokenizer = train_tokenizer(texts, args.vocab_size, cache)
        how = f"trained on FLORES dev in {time.perf_counter() - start:.0f} s, cached in {cache}"
    tok_time = f"vocab {len(tokenizer)}, {how}"
    layers, hidden, heads, ffn = PRESETS[args.preset]
    cfg = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=ffn,
                           max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           type_vocab_size=1, layer_norm_eps=1e-5)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = XLMRobertaModel(cfg, add_pooling_layer=False).eval()
    return EvalModel(model, tokenizer, "cls", name=f"random {args.preset}", cache=False,
                     max_length=args.max_length), tok_time


class Timed:
    """Wraps an encoder: total seconds and tokens spent in ``encode``."""

    def __init__(self, model):
        self.model, self.seconds, self.sentences, self.tokens = model, 0.0, 0, 0
        self.counting = 0.0  # seconds spent counting tokens (not part of the evaluation)

    def encode(self, sentences, batch_size: int = 64, **kwargs):
        start = time.perf_counter()
        out = self.model.encode(sentences, batch_size=batch_size, **kwargs)
        self.seconds += time.perf_counter() - start
        self.sentences += len(sentences)
        start = time.perf_counter()
        enc = self.model.tokenizer(list(sentences), truncation=True,
                                   max_length=self.model.max_length)
        self.tokens += sum(len(ids) for ids in enc["input_ids"])
        self.counting += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", help="a model clse eval opens (run folder, HF/ST folder)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: train one on FLORES dev)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=200)
    parser.add_argument("--split", default="devtest")
    parser.add_argument("--max-languages", type=int, help="first N languages only (a smoke run)")
    args = parser.parse_args()

    import torch

    from clse.paths import require_data_root
    from clse_plugins.xsim_flores import XsimConfig, XsimEvaluator

    torch.set_num_threads(args.threads)
    data = require_data_root("the evaluation benchmark")
    load_before = os.getloadavg()
    model, tok_time = build_model(args, data)
    languages = suite_languages()[:args.max_languages]
    evaluator = XsimEvaluator(XsimConfig(source="flores200", languages=languages,
                                         batch_size=args.batch_size))
    start = time.perf_counter()
    evaluator.load(args.split)
    read = time.perf_counter() - start
    timed = Timed(model)
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = evaluator(timed, args.split)
    total = time.perf_counter() - start - timed.counting
    cpu = time.process_time() - cpu_start - timed.counting
    load_after = os.getloadavg()
    # counting tokens re-tokenises every sentence; that time is taken out of `total`
    print(f"xsim {args.split}: {len(languages)} X->eng directions ({len(languages) + 1} languages),"
          f" {timed.sentences} sentences, {timed.tokens} tokens")
    print(f"model: {getattr(model, 'name', '?')}, {model.model.config.num_hidden_layers} layers, "
          f"hidden {model.model.config.hidden_size}; tokenizer: {tok_time}")
    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}, batch size "
          f"{args.batch_size}, max length {args.max_length}")
    print(f"reading FLORES: {read:.1f} s")
    print(f"xsim wall time: {total:.1f} s = encoding {timed.seconds:.1f} s "
          f"({timed.tokens / timed.seconds:.0f} tokens/s) + search and bookkeeping "
          f"{total - timed.seconds:.1f} s")
    print(f"process CPU time: {cpu:.1f} s (all threads; on an idle machine wall time is about "
          f"this / threads)")
    print(f"xsim/avg = {metrics['xsim/avg']:.2f} (random weights: near 100 is expected)")
    print(f"load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/"
          f"{load_before[2]:.2f}, after: {load_after[0]:.2f}/{load_after[1]:.2f}/"
          f"{load_after[2]:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
