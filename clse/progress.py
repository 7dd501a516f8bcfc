"""One switch for progress bars: a component's own option and the command's ``progress=false``."""

from __future__ import annotations

import os


def bars_off(progress: bool = True) -> bool:
    """True when a bar must stay hidden: ``progress`` is false here, or the command was run with
    ``progress=false`` (which sets ``TQDM_DISABLE``; tqdm reads it only when ``disable`` is not
    passed explicitly, so components pass ``disable=bars_off(...)``)."""
    return not progress or os.environ.get("TQDM_DISABLE", "") not in ("", "0", "false", "False")
