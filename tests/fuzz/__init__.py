"""Property-based tests (hypothesis) of everything that reads user input: corpora, tokenizer
training and loading, the config layer, evaluation files. Every generated case must end in
success or a :class:`clse.errors.ClseError` that names the file (and line) or the key, and what
was expected; any other exception escaping is a bug.

Runs are reproducible (``derandomize=True``: the same examples on every run and machine) and the
number of examples each test ran is printed at the end of the session (``conftest.py``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CLSE_FUZZ_SCALE=10 runs ten times as many examples (a longer local hunt); CI uses 1
SCALE = float(os.environ.get("CLSE_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples: int, **kwargs) -> settings:
    """Deterministic settings with no deadline (CI machines are slow and shared)."""
    return settings(max_examples=max(1, int(max_examples * SCALE)), deadline=None,
                    derandomize=True, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck), **kwargs)
