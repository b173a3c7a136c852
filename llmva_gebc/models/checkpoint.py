"""Checkpoints of the trainable part: ours (safetensors) and the originals (``.pth``).

* Ours: ``model.safetensors`` holding ``model.trainable_state_dict()`` (adapter, plus LoRA weights when
  enabled), with the key names of :class:`~llmva_gebc.models.llmva_gebc.LLMVAGEBC`.
* The originals: LLMVA-GEBC's ``checkpoint_best.pth`` and Video-LLaMA's ``pretrain-*.pth`` /
  ``finetune-*.pth`` (``{"model": state_dict, ...}``), converted by :mod:`keymaps` (``llama_proj`` ↔ the
  projection). The tied LLM head and position-id buffers they carry are ignored. Loads use
  ``weights_only=True``.

Loading is strict: missing and unexpected keys are listed, and an error is raised unless
``allow_partial`` is set (as when starting GEBC training from Video-LLaMA weights, where only the video
branch exists).

CLI: ``python -m llmva_gebc.models.checkpoint convert ORIGINAL.pth OUT_DIR`` writes ours.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file, save_file

from llmva_gebc.models import keymaps

log = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"


class CheckpointMismatchError(KeyError):
    """Missing or unexpected keys in a checkpoint of the trainable part."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
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
    tmp = p.with_name(p.name + f".tmp-{os.getpid()}")
    save_file(sd, str(tmp), metadata={"format": "llmva_gebc", **(metadata or {})})
    os.replace(tmp, p)
    return p


def read_state_dict(path: str | os.PathLike) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read a checkpoint of the trainable part, ours or an original; returns (our-keyed sd, kind)."""
    p = _resolve(path)
    if p.suffix == ".safetensors":
        return load_file(str(p)), "llmva_gebc"
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {p} with weights_only=True: {e}") from e
    sd = keymaps.unwrap_checkpoint(obj)
    if not isinstance(sd, dict):
        raise ValueError(f"{p}: expected a state dict or {{'model': state_dict}}, got {type(sd).__name__}")
    if any(k.startswith("adapter.") for k in sd):  # ours, saved as .pth
        return sd, "llmva_gebc"
    converted, ignored = keymaps.adapter_from_original(sd)
    if ignored:
        log.info("%s: ignored %d keys that are not part of the adapter (e.g. %s)", p, len(ignored), ignored[:3])
    return converted, "original"


def load_trainable(model, path: str | os.PathLike, allow_partial: bool = False) -> Tuple[List[str], List[str]]:
    """Load ours or an original checkpoint into ``model``'s trainable part.

    Returns (missing, unexpected). Raises :class:`CheckpointMismatchError` listing both unless they are
    empty or ``allow_partial`` (then missing keys keep their initial values and are logged).
    """
    sd, kind = read_state_dict(path)
    missing, unexpected = model.load_trainable_state_dict(sd, strict=False)
    if missing or unexpected:
        msg = (f"checkpoint {path} ({kind}) does not match the model's trainable part:\n"
               f"  missing ({len(missing)}): {missing}\n  unexpected ({len(unexpected)}): {unexpected}")
        if not allow_partial or unexpected:
            raise CheckpointMismatchError(
                msg + ("\n  set model.allow_partial_load: true to start from a partial checkpoint "
                       "(e.g. Video-LLaMA weights, which have no boundary embedding)" if not unexpected else ""))
        log.warning("partial load (model.allow_partial_load): %s", msg)
    return missing, unexpected


def convert_original(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert an original ``.pth`` to ``OUT/model.safetensors`` (+ ``conversion.json`` listing ignored keys)."""
    p = _resolve(src)
    obj = torch.load(p, map_location="cpu", weights_only=True)
    sd = keymaps.unwrap_checkpoint(obj)
    converted, ignored = keymaps.adapter_from_original(sd)
    if not converted:
        raise ValueError(f"{p}: no adapter keys found (keys start with {sorted({k.split('.')[0] for k in sd})[:10]})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dst = out / WEIGHTS_NAME
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp),
              metadata={"format": "llmva_gebc", "converted_from": p.name})
    os.replace(tmp, dst)
    (out / "conversion.json").write_text(json.dumps({"source": str(p), "num_keys": len(converted),
                                                     "ignored_keys": ignored}, indent=1))
    return dst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Convert original LLMVA-GEBC / Video-LLaMA checkpoints")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="ORIGINAL.pth → OUT_DIR/model.safetensors")
    c.add_argument("src")
    c.add_argument("out")
    a = ap.parse_args(argv)
    dst = convert_original(a.src, a.out)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
