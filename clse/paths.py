"""Where clse finds the shared evaluation/training data.

``CLSE_DATA`` (a folder laid out like ``shared/data``: ``flores200/``, ``tatoeba/``, ``train/``)
wins; otherwise ``shared/data`` is looked for beside the current directory and beside the source
tree (the developers' checkout layout). Returns None when none is found.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CLSE_DATA"


def data_root() -> Path | None:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), Path.cwd().parent, here, here.parent):
        cand = base / "shared" / "data"
        if (cand / "flores200").is_dir():
            return cand.resolve()
    return None


def require_data_root(what: str) -> Path:
    from clse.errors import ClseError

    root = data_root()
    if root is None:
        raise ClseError(f"{what} needs the shared data folder (flores200/, train/, tatoeba/): "
                        f"set {ENV_VAR}=/path/to/data or run from a directory beside shared/data")
    return root


def cache_root() -> Path:
    """Where clse caches models (imported, trimmed): ``$CLSE_CACHE``, else ``~/.cache/clse``."""
    env = os.environ.get("CLSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clse"
