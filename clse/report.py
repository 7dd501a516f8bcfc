"""``clse report <grid>``: an ablation grid's runs as the paper's table, beside the paper's numbers.

The grid is read from its experiment config (``experiment=<grid>``: rows from
``hydra.sweeper.params.row``, each row composed to get its cell hash, see :mod:`clse.grid`), the
runs from the MLflow store (or from a CSV written by ``--export``), the paper's numbers from
``experiments/paper_numbers.yaml``. Output: ``<grid>.md`` (one table per metric: our mean ± std
over seeds and the seed count, the paper's number, the deltas between consecutive rows as the
paper shows them, and whether each of the paper's orderings holds here) and ``<grid>.png`` (bars
with error bars, or a curve for grids with ``grid.plot=curve``).
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from clse import grid as grids
from clse.errors import ClseError, ConfigError

PAPER_FILE = Path(__file__).resolve().parent.parent / "experiments" / "paper_numbers.yaml"
# (key in the paper file, metric name under the final split, column title)
METRICS = (("xsim", "xsim/avg", "xsim error % ↓"),
           ("xsimpp", "xsimpp_generated/avg", "xsim++-style error % ↓"))
START = "untrained/{split}/{metric}"  # the model before the row trained (the MLM start)
NOISE_SE = 2.0  # a delta counts when it exceeds this many standard errors


# ----------------------------------------------------------------------------- the grid
@dataclass
class Row:
    choice: str  # the row config, e.g. table11/4_clean_to_clean
    name: str  # grid.row, the key of the paper's numbers
    label: str
    hash: str


@dataclass
class Grid:
    table: str
    title: str
    plot: str
    experiment: str  # the MLflow experiment its runs go to
    final_split: str
    seeds: list[int]
    rows: list[Row]
    budget: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None  # the config's tracking.uri (None: as clse train finds the store)
    metrics: tuple = METRICS  # (key, metric, title): grid.metrics, else xsim and xsim++-style


def load_grid(table: str, overrides: Iterable[str] = ()) -> Grid:
    """Compose ``experiment=<table>`` and each of its rows (with the same extra overrides the
    sweep was run with) to get the rows' names, labels and cell hashes."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from clse.config import setup

    setup()
    overrides = list(overrides)
    try:
        with initialize_config_module(config_module="clse_configs", version_base="1.3"):
            base = compose("train", overrides=[f"experiment={table}", *overrides],
                           return_hydra_config=True)
            if not base.grid.get("table"):
                raise ConfigError(f"experiment={table} is not an ablation grid (grid.table unset)")
            params = OmegaConf.to_container(base.hydra.sweeper.params or {})
            choices = [c.strip() for c in str(params.get("row", "")).split(",") if c.strip()]
            if not choices:
                raise ConfigError(f"experiment={table} lists no rows "
                                  f"(hydra.sweeper.params.row is empty)")
            seeds = [int(s) for s in str(params.get("seed", "0")).split(",") if s.strip()]
            rows = []
            for choice in choices:
                cfg = compose("train", overrides=[f"experiment={table}", f"row={choice}",
                                                  *overrides])
                rows.append(Row(choice=choice, name=str(cfg.grid.row),
                                label=str(cfg.grid.label or cfg.grid.row),
                                hash=grids.config_hash(cfg)))
    except HydraException as exc:
        raise ConfigError(f"clse report {table}: {str(exc).splitlines()[0]}") from None
    from clse.model.presets import PRESETS

    enc, tr, data = base.encoder, base.trainer, base.data
    raw_enc = OmegaConf.to_container(enc, resolve=False)  # (a model resolver stays unresolved)
    preset = str(enc.get("preset"))
    if raw_enc.get("pretrained"):
        preset = f"pretrained `{raw_enc['pretrained']}`" + (
            " (vocabulary trimmed to the grid's text)" if raw_enc.get("vocab_from") else "")
    elif preset in PRESETS:
        layers, hidden, heads, ffn = PRESETS[preset]
        preset = f"the {preset} ({layers} layers, hidden {hidden}, {heads} heads, FFN {ffn}) preset"
    budget = {"encoder": preset, "init_from": enc.get("init_from"),
              "steps": tr.steps, "batch_size": data.batch_size, "max_length": data.max_length,
              "lr": tr.lr, "pooling": base.pooling.name,
              "languages": len(base.eval.evaluators.xsim.languages)}
    return Grid(table=str(base.grid.table), title=str(base.grid.title or table),
                plot=str(base.grid.get("plot") or "bars"),
                experiment=str(base.tracking.experiment), final_split=str(base.eval.final_split),
                seeds=seeds, rows=rows, budget=budget, uri=base.tracking.get("uri"),
                metrics=grid_metrics(base.grid.get("metrics")))


def grid_metrics(listed: Any) -> tuple:
    """``grid.metrics`` (a list of ``{key, metric, title}``) as (key, metric, title) tuples; the
    default is xsim/avg and xsimpp_generated/avg. ``key`` names the paper's column."""
    if not listed:
        return METRICS
    out = []
    for item in listed:
        if not all(k in item for k in ("key", "metric")):
            raise ConfigError(f"grid.metrics entries need key and metric (and a title), got "
                              f"{dict(item)}")
        out.append((str(item["key"]), str(item["metric"]), str(item.get("title") or item["key"])))
    return tuple(out)


# ----------------------------------------------------------------------------- the runs
def records_from_mlflow(experiment: str, uri: str | None = None) -> list[dict]:
    """Every finished grid cell of an MLflow experiment, as flat records (see :func:`write_csv`)."""
    from clse.tracking import Tracker

    client, experiment_id = Tracker(uri=uri).store(experiment)
    runs = grids.search_runs(client, experiment_id, f"tags.`{grids.TAG_HASH}` != ''")
    return [_record(run) for run in runs if run.info.status == "FINISHED"]


def _record(run) -> dict:
    tags = run.data.tags
    # an imported run (clse tracking import) keeps the id of the run that computed it
    return {"run_id": tags.get("clse.imported_from", run.info.run_id), "run_name": run.info.run_name or "",
            "status": run.info.status, "start_time": run.info.start_time or 0,
            "end_time": run.info.end_time or 0, "hash": tags.get(grids.TAG_HASH, ""),
            "seed": int(tags.get(grids.TAG_SEED, -1)), "table": tags.get(grids.TAG_TABLE, ""),
            "row": tags.get(grids.TAG_ROW, ""), "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
            "tags": {k: v for k, v in tags.items() if k.startswith("clse.")}}


FIXED = ("run_id", "run_name", "status", "start_time", "end_time", "hash", "seed", "table", "row")


def write_csv(records: list[dict], path: str | Path) -> Path:
    """One line per run: the fixed columns, then ``metric.<name>``, ``param.<name>``,
    ``tag.<name>`` (every run's final metric values, params and clse tags)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {kind: sorted({k for r in records for k in r[kind]})
             for kind in ("metrics", "params", "tags")}
    header = [*FIXED, *(f"metric.{k}" for k in names["metrics"]),
              *(f"param.{k}" for k in names["params"]), *(f"tag.{k}" for k in names["tags"])]
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(header)
        for r in sorted(records, key=lambda r: (r["table"], r["row"], r["seed"], r["start_time"])):
            out.writerow([r[k] for k in FIXED]
                         + [r["metrics"].get(k, "") for k in names["metrics"]]
                         + [r["params"].get(k, "") for k in names["params"]]
                         + [r["tags"].get(k, "") for k in names["tags"]])
    return path


def read_csv(path: str | Path) -> list[dict]:
    """The records of :func:`write_csv`; a missing column or a bad number names the line."""
    path = Path(path)
    if not path.is_file():
        raise ClseError(f"--from {path}: no such file")
    records = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [k for k in FIXED if k not in (reader.fieldnames or [])]
        if missing:
            raise ClseError(f"{path}: not a clse report export (missing columns "
                            f"{', '.join(missing)}; write one with clse report --export)")
        for line, row in enumerate(reader, start=2):
            try:
                rec = {k: row[k] for k in FIXED}
                rec["seed"] = int(rec["seed"])
                rec["start_time"], rec["end_time"] = int(rec["start_time"]), int(rec["end_time"])
                rec["metrics"] = {k[7:]: float(v) for k, v in row.items()
                                  if k.startswith("metric.") and v != ""}
            except (TypeError, ValueError) as exc:
                raise ClseError(f"{path}, line {line}: {exc}") from None
            rec["params"] = {k[6:]: v for k, v in row.items() if k.startswith("param.") and v}
            rec["tags"] = {k[4:]: v for k, v in row.items() if k.startswith("tag.") and v}
            records.append(rec)
    return records


# ----------------------------------------------------------------------------- aggregation
@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:  # sample standard deviation over seeds
        return statistics.stdev(self.values) if self.n > 1 else math.nan


@dataclass
class RowResult:
    row: Row
    runs: list[dict]  # one per seed, newest finished run of the cell
    stats: dict[str, Stat]  # metric key -> over seeds
    start: dict[str, Stat]  # metric key -> the start model's value over seeds


def summarize(g: Grid, records: list[dict]) -> tuple[list[RowResult], list[dict]]:
    """Our results per row (newest finished run per seed), and the records of this grid's table
    whose hash no row has (runs of another budget or other overrides: not counted)."""
    by_cell: dict[tuple[str, int], dict] = {}
    for r in sorted(records, key=lambda r: r["start_time"]):
        by_cell[(r["hash"], r["seed"])] = r  # the newest wins
    hashes = {row.hash for row in g.rows}
    stale = [r for r in records if r["table"] == g.table and r["hash"] not in hashes]
    results = []
    for row in g.rows:
        runs = sorted((r for (h, _), r in by_cell.items() if h == row.hash), key=lambda r: r["seed"])
        stats, start = {}, {}
        for key, metric, _ in g.metrics:
            final = f"{g.final_split}/{metric}"
            stats[key] = Stat([r["metrics"][final] for r in runs if final in r["metrics"]])
            first = START.format(split=g.final_split, metric=metric)
            start[key] = Stat([r["metrics"][first] for r in runs if first in r["metrics"]])
        results.append(RowResult(row=row, runs=runs, stats=stats, start=start))
    return results, stale


def load_paper(table: str, path: str | Path | None = None) -> tuple[dict[str, dict], str]:
    """The paper's numbers for ``table`` (row name -> {metric: value}) and their source, from
    ``path`` or experiments/paper_numbers.yaml (of this checkout, else of the working folder)."""
    import yaml

    if path is None:
        path = next((p for p in (PAPER_FILE, Path("experiments/paper_numbers.yaml"))
                     if p.is_file()), PAPER_FILE)
        if not path.is_file():
            return {}, ""
    path = Path(path)
    if not path.is_file():
        raise ClseError(f"--paper {path}: no such file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entry = data.get(table) or {}
    return entry.get("rows") or {}, str(entry.get("source") or "")


def verdict(ours_prev: Stat, ours: Stat, paper_delta: float | None) -> str:
    """Does the paper's change between two consecutive rows hold here?"""
    if paper_delta is None:
        return ""
    if ours.n == 0 or ours_prev.n == 0:
        return "not run yet"
    if ours.n < 2 or ours_prev.n < 2:
        return "n/a (< 2 seeds)"
    delta = ours.mean - ours_prev.mean
    se = math.sqrt(ours.std ** 2 / ours.n + ours_prev.std ** 2 / ours_prev.n)
    if abs(delta) <= NOISE_SE * se:
        return "within noise"
    if paper_delta == 0:
        return "paper: no change"
    return "holds" if (delta > 0) == (paper_delta > 0) else "reversed"


def agreement(results: list[RowResult], paper: dict, key: str) -> str:
    """The lowest-error row here and in the paper, and how well the rows' order agrees with the
    paper's (Spearman's rank correlation of the means; the verdicts say what is beyond noise)."""
    rows = [(res.row.label, res.stats[key].mean, (paper.get(res.row.name) or {}).get(key))
            for res in results if res.stats[key].n]
    if not rows:
        return ""

    def lowest(values: list[tuple[str, float]]) -> str:
        best = min(v for _, v in values)
        return f"{' = '.join(label for label, v in values if v == best)} ({best:.2f})"

    text = f"Lowest error here: {lowest([(label, ours) for label, ours, _ in rows])}"
    both = [(label, ours, p) for label, ours, p in rows if p is not None]
    if both:
        text += f"; in the paper, of the same rows: {lowest([(label, p) for label, _, p in both])}"
    if len(both) >= 3:
        from scipy.stats import spearmanr

        if len({p for *_, p in both}) == 1 or len({o for _, o, _ in both}) == 1:
            text += f". Rank agreement over these {len(both)} rows: undefined (all equal)"
        else:
            rho = float(spearmanr([o for _, o, _ in both], [p for *_, p in both])[0])
            text += (f". Rank agreement with the paper over these {len(both)} rows: Spearman "
                     f"ρ = {rho:.2f} (1: same order, −1: reversed)")
    return text + "."


# ----------------------------------------------------------------------------- output
def _fmt(stat: Stat) -> str:
    if stat.n == 0:
        return "—"
    if stat.n == 1:
        return f"{stat.mean:.2f}"
    return f"{stat.mean:.2f} ± {stat.std:.2f}"


def _delta(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b):
        return ""
    d = b - a
    return f"{'↑' if d > 0 else '↓' if d < 0 else '='} {abs(d):.2f}"


def markdown(g: Grid, results: list[RowResult], paper: dict, source: str, stale: int = 0,
             records_from: str = "") -> str:
    b = g.budget
    lines = [f"# {g.title}", "",
             f"`clse report {g.table}{records_from}`: {sum(len(r.runs) for r in results)} runs, "
             f"grid `{g.table}` (MLflow experiment `{g.experiment}`). Ours: FLORES-200 "
             f"{g.final_split}, X→eng, {b.get('languages')} languages, mean ± sample std over "
             f"seeds (n = seeds). " + (
                 f"Paper: {source} (XLM-R large, 81 languages, 300k steps): absolute numbers are "
                 f"not comparable; the orderings are." if source else "No paper numbers for this "
                 "grid."), "",
             f"Budget: {b.get('encoder')}"
             + (f" from `{b.get('init_from')}`" if b.get("init_from") else "")
             + f", {b.get('steps')} steps of {b.get('batch_size')} pairs (max {b.get('max_length')} tokens), lr "
             f"{b.get('lr')}, {b.get('pooling')} pooling.", ""]
    durations = [(r["end_time"] - r["start_time"]) / 1000 for res in results for r in res.runs
                 if r["end_time"] and r["start_time"]]
    if durations:
        lines += [f"Wall time: {statistics.fmean(durations) / 60:.1f} min per run "
                  f"(training and evaluation), {sum(durations) / 3600:.1f} h in all.", ""]
    for key, _, title in g.metrics:
        lines += [f"## {title}", "",
                  "| row | n | ours | Δ ours | paper | Δ paper | paper's ordering here |",
                  "|---|---|---|---|---|---|---|"]
        prev = None
        for res in results:
            ours = res.stats[key]
            p = (paper.get(res.row.name) or {}).get(key)
            pp = (paper.get(prev.row.name) or {}).get(key) if prev else None
            pdelta = None if (p is None or pp is None) else round(p - pp, 4)
            lines.append("| " + " | ".join([
                res.row.label, str(ours.n), _fmt(ours),
                _delta(prev.stats[key].mean, ours.mean) if prev else "",
                "—" if p is None else f"{p:.2f}",
                _delta(pp, p) if pdelta is not None else "",
                verdict(prev.stats[key], ours, pdelta) if prev else ""]) + " |")
            prev = res
        starts = [v for res in results for v in res.start[key].values]
        if starts:
            lines += ["", f"Before training (the start every row shares): "
                          f"{statistics.fmean(starts):.2f}."]
        shape = agreement(results, paper, key)
        if shape:
            lines += ["", shape]
        lines.append("")
    lines += ["Verdicts compare consecutive rows: *holds* (same direction as the paper, beyond "
              f"{NOISE_SE:g} standard errors of the difference), *reversed* (the other way, beyond "
              "that), *within noise*. The paper's SentEval column has no offline counterpart "
              "here.", ""]
    if stale:
        lines += [f"{stale} run(s) tagged `{g.table}` have a config no row has now (another "
                  f"budget or other overrides): not counted.", ""]
    lines += ["## Runs", "", "| row | seed | MLflow run | config hash |", "|---|---|---|---|"]
    for res in results:
        for r in res.runs:
            lines.append(f"| {res.row.name} | {r['seed']} | `{r['run_id']}` | `{r['hash']}` |")
        if not res.runs:
            lines.append(f"| {res.row.name} | — | not run yet | `{res.row.hash}` |")
    return "\n".join(lines) + "\n"


def plot(g: Grid, results: list[RowResult], paper: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(g.metrics)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.8), squeeze=False)
    x = list(range(len(results)))
    labels = [r.row.label if g.plot == "curve" else _wrap(r.row.label) for r in results]
    for ax, (key, _, title) in zip(axes[0], g.metrics):
        means = [r.stats[key].mean for r in results]
        stds = [0.0 if math.isnan(r.stats[key].std) else r.stats[key].std for r in results]
        if g.plot == "curve":
            ax.errorbar(x, means, yerr=stds, marker="o", capsize=4, color="tab:blue",
                        label="ours (mean ± std)")
        else:
            ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.75,
                   label="ours (mean ± std)")
        for i, r in enumerate(results):  # every seed as a dot
            vals = r.stats[key].values
            ax.scatter([i] * len(vals), vals, s=12, color="black", zorder=3)
        starts = [v for r in results for v in r.start[key].values]
        if starts:  # what training started from: did the rows learn?
            ax.axhline(statistics.fmean(starts), ls=":", color="gray",
                       label="before training (shared start)")
        finite = [m for m in means if not math.isnan(m)] + ([statistics.fmean(starts)]
                                                           if starts else [])
        if finite:
            low, high = min(finite), max(finite)
            pad = max(stds + [0.0]) + 0.1 * (high - low) + 0.5
            ax.set_ylim(max(0.0, low - pad), high + pad)
        ax.set_ylabel(f"ours: {title}" + ("" if g.plot == "curve" else " (axis not from 0)"))
        ax.set_xticks(x, labels, rotation=30 if g.plot != "curve" else 0, ha="right"
                      if g.plot != "curve" else "center", fontsize=8)
        pvals = [(i, (paper.get(r.row.name) or {}).get(key)) for i, r in enumerate(results)]
        pvals = [(i, v) for i, v in pvals if v is not None]
        if pvals:
            twin = ax.twinx()
            twin.plot([i for i, _ in pvals], [v for _, v in pvals], "D--", color="tab:red",
                      label="paper")
            twin.set_ylabel(f"paper: {title}", color="tab:red")
            twin.tick_params(axis="y", colors="tab:red")
        ax.set_title(title)
        handles = ax.get_legend_handles_labels()
        if pvals:
            th = twin.get_legend_handles_labels()
            handles = (handles[0] + th[0], handles[1] + th[1])
        ax.legend(*handles, fontsize=8, loc="best")
    fig.suptitle(g.title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 18) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join(lines + [cur])


def report(table: str, out_dir: str | Path, overrides: Iterable[str] = (),
           from_csv: str | Path | None = None, export: str | Path | None = None,
           uri: str | None = None, experiment: str | None = None,
           paper_file: str | Path | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<table>.md`` and ``.png`` (and the export CSV); returns their paths."""
    g = load_grid(table, overrides)
    if from_csv is not None:
        records = read_csv(from_csv)
        source = f" --from {Path(from_csv).name}"
    else:
        records = records_from_mlflow(experiment or g.experiment, uri or g.uri)
        source = ""
    results, stale = summarize(g, records)
    paper, paper_source = load_paper(g.table, paper_file)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / f"{g.table}.md", "plot": out_dir / f"{g.table}.png"}
    paths["markdown"].write_text(markdown(g, results, paper, paper_source, len(stale), source),
                                 encoding="utf-8")
    plot(g, results, paper, paths["plot"])
    if export is not None:
        # the rows' runs and the grid's uncounted ones: --from rebuilds the same report
        mine = [r for res in results for r in res.runs] + stale
        paths["csv"] = write_csv(mine, export)
    return paths
