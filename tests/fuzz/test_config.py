"""The config layer on fuzzed overrides: unknown plugin names in groups, unknown keys, wrong
types and out-of-range values, broken override syntax, failing interpolations.

Every composed override ends in one of:

* a hydra composition error whose message names the override's key (or group) — the CLI prints
  it through hydra (no traceback, but exit status 1 and not clse's one-line format: see the
  end-to-end tests below);
* a :class:`clse.errors.ConfigError` from :func:`clse.config.validate_train_config` naming the
  key and what it expects;
* a valid config, and then the value really is valid (an oracle per key says which generated
  values are).
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from hypothesis import event, given
from hypothesis import strategies as st
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clse.config import TRAIN_SCHEMA, setup, validate_train_config
from clse.errors import ConfigError
from tests.fuzz import fuzz_settings


_SETUP: dict[str, object] = {}


def compose_train(overrides: list[str]):
    """hydra's compose, as the CLI does it (~0.3 s each)."""
    if not _SETUP:
        setup()
        _SETUP["done"] = True
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        return compose(config_name="train", overrides=["quickstart=none", *overrides])


def fast_compose(overrides: list[str]):
    """compose() for overrides of values (``a.b=v``, ``+a.b=v``, ``~a.b``), ~50x faster: hydra's
    own parser and its own ``_apply_overrides_to_config`` (what compose runs for them, after the
    defaults list is composed) on a copy of the default config; the same errors and values
    (:func:`test_fast_compose_matches_compose`). Group overrides go through compose()."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if any("." not in o.key_or_group or o.package is not None for o in parsed):
        return compose_train(overrides)
    if "base" not in _SETUP:
        _SETUP["base"] = compose_train([])
    cfg = copy.deepcopy(_SETUP["base"])
    ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    return cfg


# ----------------------------------------------------------------------------- values + oracle
# override texts; the oracle judges the value hydra parsed them to

VALUES = ["0", "1", "-3", "7", "4294967296", "0.5", "1.0", "2.5", "-0.1", "1e-3", "inf", "-inf",
          "nan", "true", "false", "null", "abc", "''", "'  '", "[1,2]", "[0.9,0.999]",
          "[0.9,1.0]", "[]", "{a:1}", "auto", "cpu", "cuda:1", "gpu", "fp32", "bf16", "fp64",
          "ddp", "fsdp", "skip", "per_batch", "packed", "maybe", "'1'"]
KEYS = sorted(k for k in TRAIN_SCHEMA if k != "data.corpora")


def oracle(key: str, v) -> bool:
    """Whether ``v`` is a valid value of ``key``: written from the user guide's tables, not
    from the validator's code."""
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    def is_num(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)

    leaf = key.split(".")[-1]
    ints = {  # key: (minimum, null allowed)
        "seed": (0, False), "trainer.steps": (0, False), "trainer.grad_accum": (1, False),
        "trainer.grad_cache_chunk": (1, True), "trainer.max_skipped_in_a_row": (0, False),
        "trainer.threads": (0, True), "trainer.log_every": (1, False),
        "trainer.checkpoint_every": (0, True), "trainer.keep_checkpoints": (0, False),
        "trainer.stop_after": (0, True), "data.batch_size": (1, False),
        "data.max_length": (2, False), "data.bucket": (1, False), "data.max_tokens": (1, True),
        "data.max_sentences": (1, True), "eval.every": (0, True), "eval.max_length": (2, False),
    }
    if key in ints:
        low, null = ints[key]
        if v is None:
            return null
        return is_int(v) and v >= low and (key != "seed" or v < 2 ** 32)
    choices = {"trainer.precision": {"auto", "fp32", "bf16", "fp16"},
               "trainer.strategy": {"ddp", "fsdp"}, "trainer.nonfinite": {"stop", "skip"},
               "data.mix": {"per_example", "per_batch"},
               "data.token_cost": {"auto", "packed", "padded"}}
    if key in choices:
        return isinstance(v, str) and v in choices[key]
    if leaf in ("progress", "enabled", "compile", "deterministic", "export", "baseline",
                "find_unused_parameters"):
        return isinstance(v, bool)
    if key == "trainer.lr":
        return is_num(v) and 0 < v < math.inf
    if key == "trainer.clip_norm":
        return is_num(v) and v > 0
    if key in ("trainer.weight_decay", "trainer.eps", "data.alpha"):
        return is_num(v) and 0 <= v < math.inf
    if key in ("trainer.warmup_ratio", "trainer.warmup_start_factor"):
        return is_num(v) and 0 <= v <= 1
    if key == "trainer.betas":
        return isinstance(v, list) and len(v) == 2 and all(is_num(b) and 0 <= b < 1 for b in v)
    if key == "trainer.device":
        return v in ("auto", "cpu", "cuda:1")
    if key in ("trainer.resume", "tracking.uri"):
        return v is None or (isinstance(v, str) and v.strip() != "")
    if key in ("eval.split", "eval.final_split"):
        return isinstance(v, str) and v.strip() != ""
    if key in ("run_name", "tracking.experiment"):
        return (v is None and key == "run_name") or (
            (isinstance(v, str) or is_int(v)) and str(v).strip() != "")
    if key == "eval.evaluators":
        return v is None or isinstance(v, dict)
    raise AssertionError(f"no oracle for {key}")


def key_in(message: str, key: str) -> bool:
    return key in message or key.split(".")[-1] in message


@fuzz_settings(200)
@given(assignments=st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES),
                                   min_size=1, max_size=3))
def test_typed_overrides(assignments):
    assignments = list(assignments.items())
    overrides = [f"{k}={text}" for k, text in assignments]
    try:
        cfg = fast_compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        # e.g. a mapping merged into a list
        assert any(key_in(str(e), k) for k, _ in assignments), str(e)
        event("composition error")
        return
    values = {k: OmegaConf.select(cfg, k) for k, _ in assignments}
    values = {k: OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v
              for k, v in values.items()}
    bad = [(k, v) for k, v in values.items() if not oracle(k, v)]
    if not bad:
        validate_train_config(cfg)
        event("valid")
        return
    with pytest.raises(ConfigError) as info:
        validate_train_config(cfg)
    msg = str(info.value)
    # the first bad key in the validator's order is named, with what it expects and what it got
    first = min(bad, key=lambda kv: list(TRAIN_SCHEMA).index(kv[0]))[0]
    assert msg.startswith(f"{first} must be ") and ", got " in msg, msg
    event("ConfigError")


group_option = st.sampled_from(["alignment", "objective", "regularizer", "pooling", "encoder",
                                "data", "trainer", "eval", "recipe", "experiment"])
name = st.one_of(st.sampled_from(["nosuch", "mse", "contrastive", "none", "mexmaa", "default",
                                  "paper", "shared", "labse", "learn_tiny", "xsim", "MSE"]),
                 st.text(st.characters(codec="ascii", categories=["Ll"], include_characters="_"),
                         min_size=1, max_size=8))


@fuzz_settings(12)
@given(group=group_option, option=name)
def test_group_options(group, option):
    """An unknown plugin or config name: hydra's error names the group and the option and lists
    the available ones; a known one composes and validates."""
    try:
        cfg = compose_train([f"{group}={option}"])
    except HydraException as e:
        msg = str(e)
        assert f"{group}/{option}" in msg and "Available options" in msg, msg
        event("unknown option")
        return
    if group in ("alignment", "objective", "regularizer", "pooling", "encoder"):
        assert cfg[group].get("name") is not None
    try:
        validate_train_config(cfg)
    except ConfigError as e:  # e.g. data=shared without the shared data folder
        assert "clse_data" in str(e) or "CLSE_DATA" in str(e), str(e)
    event("composed")


section = st.sampled_from(["trainer", "data", "eval", "tracking", "alignment", "objective",
                           "encoder", "regularizer", "pooling"])
key_name = st.text(st.characters(codec="ascii", categories=["Ll"], include_characters="_"),
                   min_size=1, max_size=10)


@fuzz_settings(100)
@given(sec=section, key=key_name, value=st.sampled_from(["1", "abc", "[1,2]", "null"]),
       plus=st.booleans())
def test_unknown_keys(sec, key, value, plus, caplog):
    """``trainer.nosuch=1`` fails composition naming the key; ``+trainer.nosuch=1`` (an explicit
    addition) composes, and a key nothing reads is logged as a possible typo."""
    caplog.clear()
    full = f"{sec}.{key}" if sec else key
    try:
        cfg = fast_compose([("+" if plus else "") + f"{full}={value}"])
    except (HydraException, OmegaConfBaseException) as e:
        assert full in str(e) or key in str(e), str(e)
        event("composition error")
        return
    try:
        validate_train_config(cfg)
    except ConfigError as e:
        assert key_in(str(e), full), str(e)
        event("ConfigError")
        return
    if plus and sec in ("trainer", "data") and full not in TRAIN_SCHEMA:
        assert f"{full}" in caplog.text and "not read by clse" in caplog.text
    event("composed")


# override text that is not valid override grammar, or whose interpolation fails
SYNTAX = ["trainer.lr=a=b", "trainer.lr=[1,", "trainer..lr=1", "trainer.lr=\x00", "trainer.lr=é",
          "trainer.lr=${oc.env:CLSE_FUZZ_NOPE}", "trainer.lr=${nope}",
          "trainer.steps=${trainer.lr}",
          "trainer.lr={a:", "trainer.lr='unterminated", "trainer.lr=\\", "~trainer.lr",
          "~data", "trainer.lr=1:2", "data.corpora=abc", "data.corpora=[1,2]", "data.corpora={}",
          "encoder.vocab_size=abc", "objective.mask_ratio=lots", "eval.evaluators.xsim.k=[1]"]


@fuzz_settings(len(SYNTAX) * 2)
@given(override=st.sampled_from(SYNTAX))
def test_broken_overrides(override):
    key = override.lstrip("~").split("=")[0].replace("..", ".")
    try:
        cfg = fast_compose([override])
    except (HydraException, OmegaConfBaseException) as e:
        msg = str(e)
        assert override.split("=")[0] in msg or "override" in msg.lower() or key in msg, msg
        event("composition error")
        return
    with pytest.raises(ConfigError) as info:
        validate_train_config(cfg)
    msg = str(info.value)
    assert key in msg or key.split(".")[0] in msg, msg
    event("ConfigError")


@pytest.mark.parametrize("overrides", [
    ["trainer.lr=0.1", "data.alpha=abc"], ["trainer.nosuch=1"], ["+trainer.nosuch=1"],
    ["~trainer.lr"], ["encoder.vocab_size=abc"], ["trainer.betas={a:1}"], ["trainer.lr=${nope}"],
    ["trainer.lr=[1,"], ["alignment.temperature=0.5"]])
def test_fast_compose_matches_compose(overrides):
    def outcome(fn):
        try:
            return OmegaConf.to_yaml(fn(overrides))
        except Exception as e:  # the same type and message
            return f"{type(e).__name__}: {e}"

    assert outcome(fast_compose) == outcome(compose_train)


@pytest.mark.parametrize("overrides", [
    [], ["trainer=paper"], ["data=shared"], ["eval=none"], ["eval=[default,mexa]"],
    ["experiment=learn_tiny"], ["experiment=recipe_budget"], ["encoder=small"],
    *[[f"recipe={r}"] for r in ("mexma", "labse", "contrastive_xlmr", "mexma_contrastive", "tlm",
                                "infoxlm", "sonar")],
])
def test_every_shipped_config_validates(overrides):
    validate_train_config(compose_train(overrides))


# ----------------------------------------------------------------------------- end to end

def _clse(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLSE_LOG_LEVEL": "WARNING",
           "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "clse.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


TINY = ["quickstart=none", "encoder.vocab_size=200", "encoder.tokenizer_sample=400", "objective.head_layers=1",
        "data.batch_size=4", "data.max_length=16", "trainer.steps=1", "eval=none",
        "trainer.export=false", "tracking.enabled=false", "progress=false"]

SMALL = "data.corpora=[{kind: tsv, path: GOOD}]"  # a 4-pair corpus: quick to load and tokenize
E2E = {  # name: (overrides, text the one-line error must contain, xfail reason or None)
    "corpus_option_type": (["data.corpora=[{kind: tsv, path: GOOD, max_pairs_per_language: abc}]"],
                           "max_pairs_per_language must be an integer", None),
    "huge_vocab_size": ([SMALL, "encoder.vocab_size=1000000000"], "vocab_size must be", None),
    "wrong_type_trainer_key": ([SMALL, "trainer.lr=[1,2]"], "trainer.lr must be a number > 0",
                               None),
    "unknown_plugin": (["alignment=nosuch"], "alignment/nosuch", None),
    "empty_key": (["=1"], "override", None),
}


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory):
    """All end-to-end runs at once, in parallel (each is a python start-up plus a little work)."""
    tmp = tmp_path_factory.mktemp("e2e")
    good = tmp / "good.tsv"
    good.write_text("eng_Latn\tdeu_Latn\tHello there.\tHallo da.\n"
                    "eng_Latn\tfra_Latn\tGood night.\tBonne nuit.\n" * 2)
    procs = {}
    for name, (overrides, _, _) in E2E.items():
        cwd = tmp / name
        cwd.mkdir()
        args = [o.replace("GOOD", str(good)) for o in overrides]
        procs[name] = _clse([*TINY, *args], cwd)
    return {name: (p.wait(timeout=300), p.stdout.read(), p.stderr.read())
            for name, p in procs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=why, strict=True)) if why else n
    for n, (_, _, why) in E2E.items()])
def test_cli_bad_input_is_one_line(e2e_runs, name):
    rc, out, err = e2e_runs[name]
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln
             and not ln.startswith("  warnings.warn")]
    assert "Traceback" not in err, err[-2000:]
    assert rc == 2, err[-2000:]
    errors = [ln for ln in lines if ln.startswith("clse: error: ")]
    assert len(errors) == 1 and E2E[name][1] in errors[0], err[-2000:]
