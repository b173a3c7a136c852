"""Checkpoints of the trainable part: ours (safetensors) and the originals (``.pth``).

* Ours: ``model.safetensors`` holding ``model.trainable_state_dict()`` (adapter, plus LoRA weights when
  enabled), with the key names of :class:`~llmva_gebc.models.llmva_gebc.LLMVAGEBC`.
* The originals: LLMVA-GEBC's ``checkpoint_best.pth`` and Video-LLaMA's ``pretrain-*.pth`` /
  ``finetune-*.pth`` (``{"model": state_dict, ...}``), converted by :mod:`keymaps` (``llama_proj`` ↔ the
  projection). The tied LLM head and position-id buffers they carry are ignored. Loads use
  ``weights_only=True``.

Loading is strict and all or nothing: missing and unexpected keys are listed, and an error is raised
unless ``allow_partial`` is set (as when starting GEBC training from Video-LLaMA weights, where only the
video branch exists); every key and shape is checked before any tensor is copied, so a failed load leaves
the model as it was. A file that cannot be read (truncated, not a checkpoint) raises
:class:`CheckpointReadError` naming it and saying what is wrong.

CLI: ``python -m llmva_gebc.models.checkpoint convert ORIGINAL.pth OUT_DIR`` writes ours.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file, save

from llmva_gebc.errors import UserError, one_line
from llmva_gebc.fileio import atomic_write_bytes
from llmva_gebc.models import keymaps

log = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"


class CheckpointMismatchError(KeyError, UserError):
    """Missing or unexpected keys in a checkpoint of the trainable part."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class CheckpointReadError(UserError):
    """A checkpoint file that exists but cannot be read (truncated, corrupt, not a state dict)."""


def check_shapes(params: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor], where: str = "") -> None:
    """Raise :class:`CheckpointMismatchError` (a ``ValueError``) listing every key of ``sd`` whose shape differs from ``params[key]`` (keys
    absent from ``params`` are ignored); checked before anything is copied."""
    bad = [f"'{k}': checkpoint {tuple(v.shape)} vs model {tuple(params[k].shape)}"
           for k, v in sd.items() if k in params and tuple(params[k].shape) != tuple(v.shape)]
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise CheckpointMismatchError(f"{where}shape mismatch for {len(bad)} tensors: {'; '.join(bad[:5])}{more}; nothing "
                         "was loaded (was the checkpoint trained with another LLM or adapter size?)")


def read_safetensors(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with an error naming the file when it is truncated or corrupt."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CheckpointReadError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    except Exception as e:  # safetensors_rust.SafetensorError: header / size inconsistent
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise CheckpointReadError(
            f"checkpoint {path} is truncated or corrupt ({size} bytes; safetensors: {e}); the write that made it "
            "was probably interrupted: use another checkpoint (e.g. checkpoint_best/ or the .old copy)") from e


def read_torch_file(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with an error naming the file when it cannot be read."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EISDIR):
            raise CheckpointReadError(f"cannot read {path}: {e.strerror or e}") from e
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise CheckpointReadError(f"checkpoint {path} is truncated or corrupt ({size} bytes; torch.load: "
                                  f"{e.strerror or e}); use another copy of it") from e
    except Exception as e:
        what = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unpickler" in str(e):
            # torch's advice to retry with weights_only=False is not ours to follow for a user's file
            what = ("not a weights-only torch checkpoint: truncated, corrupt, or holding Python objects other "
                    "than tensors and plain containers (never unpickled here)")
        elif "zip" in what or "archive" in what or "EOF" in what or "central directory" in what:
            what = f"truncated or corrupt ({what})"
        raise CheckpointReadError(f"cannot read {path} with torch.load(weights_only=True): {what}") from e


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    run_dir = None
    if p.is_dir():
        run_dir = next((p / c for c in ("checkpoint_best", "checkpoint_last") if (p / c / WEIGHTS_NAME).is_file()), None)
        p = p / WEIGHTS_NAME
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}" + (f" ({p.parent} is a run directory: give {run_dir})"
                                                                if run_dir is not None else ""))
    return p


def save_trainable(model, path: str | os.PathLike, metadata: Dict[str, str] | None = None) -> Path:
    """Write ``model.trainable_state_dict()`` as safetensors to ``path`` (a dir → ``dir/model.safetensors``).

    Atomic: written to a temporary file, then renamed.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        p.mkdir(parents=True, exist_ok=True)
        p = p / WEIGHTS_NAME
    sd = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    return atomic_write_bytes(p, save(sd, metadata={"format": "llmva_gebc", **(metadata or {})}))


def check_weights(sd: Dict[str, object], path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Raise :class:`CheckpointReadError` naming ``path`` and the first offending key unless every value of
    ``sd`` is a floating-point tensor of finite values (the trainable part is all weights: an integer or
    boolean tensor would be cast silently on load, a NaN would silently give empty captions)."""
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointReadError(f"{path}: '{k}' is a {type(v).__name__}, not a tensor; expected a state dict "
                                      "of weight tensors")
        if not v.is_floating_point():
            raise CheckpointReadError(f"{path}: tensor '{k}' has dtype {v.dtype}; weights are floating point "
                                      "(float32/float16/bfloat16)")
        bad = int((~torch.isfinite(v)).sum())
        if bad:
            raise CheckpointReadError(f"{path}: tensor '{k}' holds {bad} non-finite values (NaN/inf) of {v.numel()}; "
                                      "was it saved from a diverged run? use another checkpoint")
    return sd  # type: ignore[return-value]


def read_state_dict(path: str | os.PathLike) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read a checkpoint of the trainable part, ours or an original; returns (our-keyed sd, kind).
    Every tensor is checked by :func:`check_weights`."""
    p = _resolve(path)
    if p.suffix == ".safetensors":
        return check_weights(read_safetensors(p), p), "llmva_gebc"
    converted, ignored, kind = _our_keys(_state_dict_of(read_torch_file(p), p))
    if ignored:
        log.info("%s: ignored %d keys that are not part of the adapter (e.g. %s)", p, len(ignored), ignored[:3])
    return check_weights(converted, p), kind


def _our_keys(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """(our-keyed state dict, ignored original keys, kind) of a ``.pth`` state dict: ours saved as
    ``.pth`` (keys under ``adapter.``) as it is, an original's through the key map (mapping ours again
    would turn every key into ``adapter.adapter.*``)."""
    if any(k.startswith("adapter.") for k in sd):
        return dict(sd), [], "llmva_gebc"
    converted, ignored = keymaps.adapter_from_original(sd)
    return converted, ignored, "original"


def _state_dict_of(obj, p: Path) -> Dict[str, torch.Tensor]:
    sd = keymaps.unwrap_checkpoint(obj)
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise CheckpointReadError(f"{p}: expected a state dict or {{'model': state_dict}}, got {type(sd).__name__}")
    return sd


def load_trainable(model, path: str | os.PathLike, allow_partial: bool = False) -> Tuple[List[str], List[str]]:
    """Load ours or an original checkpoint into ``model``'s trainable part.

    Returns (missing, unexpected). Raises :class:`CheckpointMismatchError` listing both unless they are
    empty or ``allow_partial`` (then missing keys keep their initial values and are logged).
    """
    sd, kind = read_state_dict(path)
    own = dict(model.trainable_parameters())
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        msg = (f"checkpoint {path} ({kind}) does not match the model's trainable part: "
               f"missing ({len(missing)}): {missing}; unexpected ({len(unexpected)}): {unexpected}")
        if not allow_partial or unexpected:
            raise CheckpointMismatchError(
                msg + ("; set model.allow_partial_load: true to start from a partial checkpoint "
                       "(e.g. Video-LLaMA weights, which have no boundary embedding)" if not unexpected else ""))
        log.warning("partial load (model.allow_partial_load): %s", msg)
    check_shapes(own, sd, where=f"checkpoint {path} ({kind}) does not fit the model: ")
    model.load_trainable_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return missing, unexpected


def load_trained(model, ckpt: str | os.PathLike, cfg) -> None:
    """:func:`load_trainable` of ``ckpt`` with ``cfg.model.allow_partial_load``; when the checkpoint does
    not fit, the error names the ``model.*`` keys in which the checkpoint's training config (the
    ``config.yaml`` of its run directory) differs from ``cfg``, e.g.
    ``model.adapter.hidden_size: checkpoint 128 vs config 64``."""
    from llmva_gebc.config import WEIGHT_NEUTRAL_MODEL_KEYS, config_diff

    p = Path(ckpt)
    saved = next((d / "config.yaml" for d in (p, p.parent, p.parent.parent) if (d / "config.yaml").is_file()), None)
    try:
        load_trainable(model, ckpt, allow_partial=bool(cfg.model.allow_partial_load))
    except CheckpointMismatchError as e:
        diff = config_diff(saved, cfg) if saved is not None else []
        if not diff:
            raise
        raise CheckpointMismatchError(f"checkpoint {ckpt} does not fit the config ({saved} differs: "
                                      f"{'; '.join(diff)})") from e
    # It fits; but weights trained with another LLM (of the same width) or adapter settings caption
    # differently: say so (paths may differ between machines, so this is a warning, not an error).
    diff = [d for d in (config_diff(saved, cfg, limit=10**6) if saved is not None else [])
            if not d.startswith(WEIGHT_NEUTRAL_MODEL_KEYS)]
    if diff:
        log.warning("checkpoint %s was trained with another model config (%s): %s", ckpt, saved,
                    "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else ""))


def convert_original(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert an original ``.pth`` to ``OUT/model.safetensors`` (+ ``conversion.json`` listing ignored keys)."""
    p = _resolve(src)
    sd = _state_dict_of(read_torch_file(p), p)
    converted, ignored, _ = _our_keys(sd)
    if not converted:
        raise UserError(f"{p}: no adapter keys found (keys start with {sorted({k.split('.')[0] for k in sd})[:10]})")
    check_weights(converted, p)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dst = out / WEIGHTS_NAME
    atomic_write_bytes(dst, save({k: v.contiguous() for k, v in converted.items()},
                                 metadata={"format": "llmva_gebc", "converted_from": p.name}))
    (out / "conversion.json").write_text(json.dumps({"source": str(p), "num_keys": len(converted),
                                                     "ignored_keys": ignored}, indent=1))
    return dst


def _main(argv) -> None:
    from llmva_gebc import cli

    ap = argparse.ArgumentParser(prog="python -m llmva_gebc.models.checkpoint",
                                 description="Convert original LLMVA-GEBC / Video-LLaMA checkpoints")
    cli.add_debug_arg(ap)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="ORIGINAL.pth → OUT_DIR/model.safetensors")
    c.add_argument("src")
    c.add_argument("out")
    a = ap.parse_args(argv)
    cli.setup_logging(a.debug, level=logging.WARNING)
    try:
        dst = convert_original(a.src, a.out)
    except (OSError, ValueError) as e:  # missing/unreadable/truncated input, not a state dict, full disk
        raise UserError(one_line(e)) from e  # one line, exit 2 (cli.run)
    print(f"wrote {dst}")


def main(argv=None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
