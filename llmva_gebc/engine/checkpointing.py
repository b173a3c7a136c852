"""Training checkpoints: a directory with ``model.safetensors`` + ``trainer_state.pt``, written atomically.

Layout of ``<run_dir>/checkpoint_last/`` (and ``checkpoint_best/``):

* ``model.safetensors`` — the trainable weights only (``model.trainable_state_dict()`` keys);
* ``trainer_state.pt`` — a dict of tensors and plain containers, loadable with
  ``torch.load(weights_only=True)``: optimizer, scheduler (``{"step": s}``), grad scaler, ``epoch``,
  ``global_step``, ``samples_in_epoch`` (samples of ``epoch``'s order already consumed by all ranks:
  the resume position, valid for another batch size), ``batch_in_epoch`` (micro-batches of it at
  ``batch_size_train``), ``epoch_loss`` (``[sum, steps]`` of the epoch's step losses so far),
  ``pending_validation`` (an epoch trained but not yet validated, or None), best metric, skipped-step
  count, world size, and the python/numpy/torch/CUDA RNG states of every rank.

Atomic replacement of a directory ``T`` (a kill at any instant leaves a loadable checkpoint):

1. write everything into ``T.tmp-<pid>/`` (fsynced);
2. if ``T`` exists: drop a stale ``T.old`` and rename ``T`` → ``T.old``;
3. rename ``T.tmp-<pid>`` → ``T``;
4. delete ``T.old``.

Between 2 and 3 only ``T.old`` exists; :func:`resolve_checkpoint` then returns it. Leftover
``*.tmp-*`` directories are never read; the trainer removes them on its next start
(:func:`llmva_gebc.fileio.remove_stale_temporaries`).

Errors: a failed write (disk full, read-only file system, ...) raises
:class:`llmva_gebc.fileio.OutputWriteError` naming the checkpoint and the cause; the temporary is
removed and the previous checkpoint is kept. A truncated or corrupt file raises
:class:`llmva_gebc.models.checkpoint.CheckpointReadError` naming it.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from llmva_gebc.fileio import os_error_in, write_error

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"


# ------------------------------------------------------------------------------------ RNG states
def get_rng_state() -> Dict[str, Any]:
    """This process's RNG states as tensors / primitive containers (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ writing
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_weights(state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    """Trainable weights as safetensors (contiguous CPU copies; shared storage is split). Written from
    Python so that a failed write surfaces as an ``OSError`` with its errno (disk full ...)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()},
                metadata={"format": "pt", "content": "llmva_gebc trainable weights"})
    with open(path, "wb") as f:
        f.write(data)


def save_state(state: Dict[str, Any], path: Path) -> None:
    """``torch.save`` through a Python file object: a failed write keeps its ``OSError`` (as the context
    of torch's ``RuntimeError``) instead of an anonymous ``enforce fail at inline_container.cc``."""
    with open(path, "wb") as f:
        torch.save(state, f)


def load_weights(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    from llmva_gebc.models.checkpoint import read_safetensors

    return read_safetensors(path)


def atomic_write_dir(target: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(tmp_dir)`` to fill a fresh directory, then swap it in as ``target`` (see module doc)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f"{target.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_fn(tmp)
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and os_error_in(e) is not None:
            raise write_error(target, e, "write checkpoint",
                              "; the previous checkpoint there (if any) is kept") from e
        raise
    try:
        if target.exists():
            if old.exists():  # a finished earlier swap left it; target is the good copy
                shutil.rmtree(old)
            os.replace(target, old)
        # if target is missing but old exists (crash mid-swap earlier), old stays until the new one is in place
        os.replace(tmp, target)
    except OSError as e:
        raise write_error(target, e, "replace checkpoint", f" (the new one is in {tmp})") from e
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)
    return target


def save_checkpoint(target: str | os.PathLike, weights: Dict[str, torch.Tensor], state: Dict[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``trainer_state.pt`` atomically into ``target`` (rank 0 only)."""

    def write(d: Path) -> None:
        save_weights(weights, d / MODEL_FILE)
        save_state(state, d / STATE_FILE)

    return atomic_write_dir(target, write)


# ------------------------------------------------------------------------------------ reading
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The complete checkpoint directory for ``path``: ``path`` itself, or ``path.old`` left by a
    write that was interrupted between its two renames. Raises FileNotFoundError naming both."""
    path = Path(path)
    if (path / STATE_FILE).is_file() and (path / MODEL_FILE).is_file():
        return path
    old = path.with_name(path.name + ".old")
    if (old / STATE_FILE).is_file() and (old / MODEL_FILE).is_file():
        return old
    raise FileNotFoundError(
        f"no checkpoint at {path} (expected {MODEL_FILE} and {STATE_FILE} there or in {old})")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """``(weights, trainer_state, resolved_dir)``; the state is read with ``weights_only=True``."""
    from llmva_gebc.models.checkpoint import read_torch_file

    d = resolve_checkpoint(path)
    weights = load_weights(d / MODEL_FILE)
    state = read_torch_file(d / STATE_FILE, map_location=map_location)
    return weights, state, d


def find_resume_dir(path: Optional[str | os.PathLike]) -> Optional[Path]:
    """Accept a checkpoint dir or a run dir (then its ``checkpoint_last``)."""
    if path is None:
        return None
    p = Path(path)
    for cand in (p, p / "checkpoint_last"):
        try:
            return resolve_checkpoint(cand)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"run.resume={path}: no checkpoint there (nor in {p / 'checkpoint_last'})")


__all__ = ["MODEL_FILE", "STATE_FILE", "get_rng_state", "set_rng_state", "save_weights", "save_state", "load_weights",
           "atomic_write_dir", "save_checkpoint", "resolve_checkpoint", "load_checkpoint",
           "find_resume_dir"]
