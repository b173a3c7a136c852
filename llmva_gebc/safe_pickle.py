"""Reading a user's ``.pkl`` without running it: a restricted unpickler.

``pickle.load`` calls any importable function the file names (``os.system``, ``subprocess.run``,
...), so a ``.pkl`` submission or feature file could run code on the machine that reads it. Every
``.pkl`` read in this project goes through :func:`load_pickle`, which resolves only the globals the
format needs and refuses every other one before anything is called:

* ``"submission"``: dicts, lists, tuples and strings need no globals at all; only
  ``collections.OrderedDict`` is admitted besides.
* ``"array"`` (other-feature files): numpy arrays and scalars, i.e. numpy's own reconstruct functions
  (``numpy._core.multiarray._reconstruct`` / ``scalar``, ``numpy._core.numeric._frombuffer``, under
  their numpy 1.x ``numpy.core`` names too), ``numpy.ndarray``, ``numpy.dtype`` and ``_codecs.encode``
  (protocol-2 pickles store bytes through it). Plain lists of numbers need no globals.

The standard library documents this pattern ("Restricting Globals" in the :mod:`pickle` docs).
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Tuple

from llmva_gebc.errors import UserError

_NUMPY_GLOBALS = {
    # (module, name) as written in the pickle -> (module, name) to import (numpy 1.x pickles name numpy.core)
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}
ALLOWED: Dict[str, Dict[Tuple[str, str], Tuple[str, str]]] = {
    "submission": {("collections", "OrderedDict"): ("collections", "OrderedDict")},
    "array": _NUMPY_GLOBALS,
}
_WHAT = {"submission": "dicts, lists and strings", "array": "numpy arrays or lists of numbers"}


class RefusedPickleError(pickle.UnpicklingError, UserError):
    """A pickle that names a global its format does not need; the message names the global."""


class _Restricted(pickle.Unpickler):
    def __init__(self, f, kind: str) -> None:
        super().__init__(f)
        self.kind = kind

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED[self.kind].get((module, name))
        if target is None:
            raise RefusedPickleError(f"refused global '{module}.{name}': a {self.kind} pickle may hold only "
                                     f"{_WHAT[self.kind]}")
        return getattr(importlib.import_module(target[0]), target[1])


def loads_pickle(data: bytes, kind: str) -> Any:
    """Unpickle ``data`` admitting only the globals of ``kind`` (``"submission"`` or ``"array"``).

    Raises ``RefusedPickleError`` for any other global (nothing of the pickle has run by then),
    ``pickle.UnpicklingError``/``EOFError``/``ValueError`` for a corrupt pickle.
    """
    if kind not in ALLOWED:
        raise ValueError(f"unknown pickle kind {kind!r}; expected one of {sorted(ALLOWED)}")
    return _Restricted(io.BytesIO(data), kind).load()


def load_pickle(path: str | os.PathLike, kind: str) -> Any:
    """:func:`loads_pickle` of the file at ``path`` (errors as there; the caller names the file)."""
    return loads_pickle(Path(path).read_bytes(), kind)


__all__ = ["load_pickle", "loads_pickle", "RefusedPickleError", "ALLOWED"]
