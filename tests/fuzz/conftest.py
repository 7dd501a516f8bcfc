"""Counts the examples hypothesis runs per test and prints them at the end of the session."""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from pathlib import Path

COUNTS: Counter[str] = Counter()


def pytest_configure(config):
    # hypothesis writes .hypothesis/ (failure patches, caches) into the working directory even
    # without a database: keep it out of the checkout
    import tempfile

    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "clse-fuzz-hypothesis"))


def pytest_collection_modifyitems(config, items):
    wrapped = set()
    for item in items:
        fn = getattr(item, "obj", None)
        handle = getattr(fn, "hypothesis", None)
        if handle is None or id(fn) in wrapped:
            continue  # not a hypothesis test, or a parametrized one already wrapped
        wrapped.add(id(fn))
        key = f"{Path(str(item.fspath)).name}::{fn.__name__}"
        inner = handle.inner_test

        @functools.wraps(inner)
        def counted(*args, __inner=inner, __key=key, **kwargs):
            COUNTS[__key] += 1  # hypothesis calls inner_test once per example
            return __inner(*args, **kwargs)

        handle.inner_test = counted


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    tr = terminalreporter
    tr.section("fuzz: generated cases")
    per_file: Counter[str] = Counter()
    for key, n in sorted(COUNTS.items()):
        tr.write_line(f"{n:6d}  {key}")
        per_file[key.split("::")[0]] += n
    for name, n in sorted(per_file.items()):
        tr.write_line(f"{n:6d}  {name} (total)")
    tr.write_line(f"{sum(COUNTS.values()):6d}  all fuzz tests")
    out = os.environ.get("CLSE_FUZZ_COUNTS")  # a JSON file for CI records
    if out:
        Path(out).write_text(json.dumps({"tests": dict(COUNTS), "files": dict(per_file),
                                         "total": sum(COUNTS.values())}, indent=1) + "\n")
