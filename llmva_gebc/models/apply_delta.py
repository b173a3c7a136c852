"""Build Vicuna from LLaMA plus delta weights (the original recipe's ``apply_delta`` step, Vicuna v0).

    python -m llmva_gebc.models.apply_delta --base LLAMA_DIR --delta DELTA_DIR --target OUT_DIR
        [--max-shard-size 4GB] [--no-check-tokenizer]

Vicuna's weights were released as a *delta* over the LLaMA weights (FastChat's ``apply_delta.py``):
every target tensor is ``base + delta``. The delta's tokenizer adds tokens (Vicuna v0 adds ``[PAD]``,
32000 → 32001), so ``model.embed_tokens.weight`` and ``lm_head.weight`` have more rows in the delta
than in the base; those extra rows are taken from the delta alone (the base is zero-padded), which is
what FastChat does (v0: resize the base's embeddings with zero rows, then add; later versions:
``delta[:rows_base] += base``).

Streaming: tensors are read one at a time (``safetensors.safe_open`` for ``*.safetensors``; a PyTorch
``.bin`` shard is memory-mapped with ``torch.load(mmap=True, weights_only=True)``), so a 13B model
never needs more than about one output shard (``--max-shard-size``) in memory, not 2x the model.
The target is written as safetensors shards (``model-00001-of-0000N.safetensors`` +
``model.safetensors.index.json``, or one ``model.safetensors``), each to a temporary name and renamed
into place; then the delta's ``config.json``, ``generation_config.json`` and tokenizer files are copied.

Checks (each a :class:`DeltaError` naming the tensor or file): the base and the delta hold the same
tensor names; shapes agree (only the embedding / LM-head rows may grow, by the number of tokens the
delta's tokenizer adds); the delta's tokenizer keeps every base token at its id; tensors are floating
point. The sum is computed in the delta's dtype (``base.to(delta.dtype) + delta``), the target keeps it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from llmva_gebc.errors import UserError

# Tensors whose first dimension is the vocabulary (may grow by the delta's added tokens).
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
CONFIG_FILES = ("config.json", "generation_config.json")


class DeltaError(UserError):
    """Base and delta do not fit together (names, shapes, tokenizers, files); the message names the tensor."""


# ------------------------------------------------------------------------------------------ reading
class TensorStore:
    """Read-only, one-tensor-at-a-time access to the weights of a Hugging Face model folder.

    Reads ``model.safetensors``, ``*.safetensors`` shards (with or without an index), or PyTorch
    ``pytorch_model*.bin`` shards (memory-mapped, ``weights_only``). Raises :class:`DeltaError` when
    the folder has no weights or a tensor is listed twice."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DeltaError(f"model folder not found: {self.folder}")
        files = sorted(self.folder.glob("*.safetensors"))
        self.kind = "safetensors"
        if not files:
            files = sorted(p for p in self.folder.glob("*.bin") if p.name.startswith("pytorch_model"))
            self.kind = "bin"
        if not files:
            raise DeltaError(f"{self.folder}: no *.safetensors or pytorch_model*.bin weight files")
        self._bin_cache: Tuple[Optional[Path], Optional[Dict[str, torch.Tensor]]] = (None, None)
        self.where: Dict[str, Path] = {}
        for f in files:
            for name in self._names(f):
                if name in self.where:
                    raise DeltaError(f"{self.folder}: tensor '{name}' is stored in both {self.where[name].name} "
                                     f"and {f.name}")
                self.where[name] = f

    def _names(self, f: Path) -> List[str]:
        if self.kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as h:
                return list(h.keys())
        return list(self._load_bin(f).keys())

    def _load_bin(self, f: Path) -> Dict[str, torch.Tensor]:
        if self._bin_cache[0] != f:  # one .bin shard mapped at a time
            try:
                sd = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:
                raise DeltaError(f"cannot read {f}: {type(e).__name__}: {e}") from None
            self._bin_cache = (f, sd)
        return self._bin_cache[1]  # type: ignore[return-value]

    def names(self) -> List[str]:
        return list(self.where)

    def shape(self, name: str) -> Tuple[int, ...]:
        f = self.where[name]
        if self.kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as h:
                return tuple(h.get_slice(name).get_shape())
        return tuple(self._load_bin(f)[name].shape)

    def get(self, name: str) -> torch.Tensor:
        f = self.where[name]
        if self.kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as h:
                return h.get_tensor(name)
        return self._load_bin(f)[name]


# ------------------------------------------------------------------------------------------ checks
def _tokenizer_growth(base_dir: Path, delta_dir: Path) -> Optional[int]:
    """Tokens the delta's tokenizer adds to the base's (None when either folder has no tokenizer).

    Every base token must keep its id in the delta's vocabulary."""
    if not any((base_dir / f).is_file() for f in TOKENIZER_FILES) or \
            not any((delta_dir / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        tb = AutoTokenizer.from_pretrained(str(base_dir))
        td = AutoTokenizer.from_pretrained(str(delta_dir))
    except Exception as e:
        raise DeltaError(f"cannot load the tokenizers of {base_dir} / {delta_dir}: {type(e).__name__}: {e}") from None
    vb, vd = tb.get_vocab(), td.get_vocab()
    moved = [t for t, i in vb.items() if vd.get(t) != i]
    if moved:
        t = moved[0]
        raise DeltaError(f"the delta's tokenizer ({delta_dir}) changes base token {t!r} (id {vb[t]} -> "
                         f"{vd.get(t)}); {len(moved)} base tokens differ")
    return len(td) - len(tb)


def plan(base: TensorStore, delta: TensorStore, added_tokens: Optional[int]) -> List[str]:
    """The tensor names to write (the delta's order), after checking names and shapes against the base."""
    bn, dn = set(base.names()), set(delta.names())
    if bn != dn:
        only_d, only_b = sorted(dn - bn), sorted(bn - dn)
        which = (f"tensor '{only_d[0]}' is in the delta but not in the base" if only_d
                 else f"tensor '{only_b[0]}' is in the base but not in the delta")
        raise DeltaError(f"{which} ({len(only_d)} delta-only, {len(only_b)} base-only tensors)")
    for name in delta.names():
        sb, sd = base.shape(name), delta.shape(name)
        if sb == sd:
            continue
        grows = (name in VOCAB_TENSORS and len(sb) == len(sd) and sb[1:] == sd[1:] and sd[0] > sb[0])
        if not grows:
            raise DeltaError(f"tensor '{name}': base shape {list(sb)} does not match delta shape {list(sd)}")
        if added_tokens is not None and sd[0] - sb[0] != added_tokens:
            raise DeltaError(f"tensor '{name}': the delta has {sd[0] - sb[0]} more rows than the base, but its "
                             f"tokenizer adds {added_tokens} tokens")
    return delta.names()


def add(name: str, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``b + d`` in ``d``'s dtype; rows of ``d`` beyond ``b``'s (added tokens) are kept as they are."""
    if not (b.is_floating_point() and d.is_floating_point()):
        raise DeltaError(f"tensor '{name}': expected floating-point weights, got {b.dtype} + {d.dtype}")
    out = d.clone()  # (rows_d, ...)
    out[: b.shape[0]] += b.to(d.dtype)
    if not bool(torch.isfinite(out).all()):  # a NaN/inf in either (a corrupt download) would pass into Vicuna
        which = [w for w, t in (("base", b), ("delta", d)) if not bool(torch.isfinite(t).all())] or ["sum"]
        raise DeltaError(f"tensor '{name}': non-finite values (NaN/inf) in the {' and the '.join(which)}; re-download "
                         "it (nothing was written)")
    return out


# ------------------------------------------------------------------------------------------ writing
def parse_size(text: str) -> int:
    """'4GB', '500MB', '1024' → bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?)?\s*", str(text), re.I)
    if not m:
        raise DeltaError(f"--max-shard-size: cannot read {text!r} (e.g. 4GB, 500MB)")
    unit = (m.group(2) or "").upper().replace("I", "").rstrip("B")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit])


def _shards(names: List[str], base: TensorStore, delta: TensorStore, max_bytes: int
            ) -> Iterator[Dict[str, torch.Tensor]]:
    cur: Dict[str, torch.Tensor] = {}
    size = 0
    for name in names:
        t = add(name, base.get(name), delta.get(name))
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > max_bytes:
            yield cur
            cur, size = {}, 0
        cur[name] = t
        size += nbytes
    if cur:
        yield cur


def apply_delta(base_dir: str | os.PathLike, delta_dir: str | os.PathLike, target_dir: str | os.PathLike,
                max_shard_size: str | int = "4GB", check_tokenizer: bool = True) -> Dict[str, str]:
    """Write ``target = base + delta`` (see the module docstring); returns the weight map {tensor: file}.

    Raises :class:`DeltaError` before writing any weights when names, shapes or tokenizers disagree.
    """
    base_dir, delta_dir, target = Path(base_dir), Path(delta_dir), Path(target_dir)
    base, delta = TensorStore(base_dir), TensorStore(delta_dir)
    if target.resolve() in (base_dir.resolve(), delta_dir.resolve()):
        raise DeltaError(f"--target {target} must differ from --base and --delta")
    if target.is_dir() and any(target.glob("*.safetensors")):
        raise DeltaError(f"--target {target} already holds *.safetensors weights; choose an empty folder "
                         "(nothing there is overwritten)")
    added = _tokenizer_growth(base_dir, delta_dir) if check_tokenizer else None
    names = plan(base, delta, added)
    max_bytes = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    from llmva_gebc.fileio import check_writable_dir

    check_writable_dir(target, "--target folder")  # a file there, a read-only disk: before any tensor is added
    from safetensors.torch import save_file

    # Written under temporary names, then renamed once all are complete: a crash leaves no weights.
    tmp_files: List[Path] = []
    weight_map: Dict[str, str] = {}
    total = 0
    try:
        for k, shard in enumerate(_shards(names, base, delta, max_bytes)):
            tmp = target / f".shard-{k:05d}.safetensors.tmp"
            save_file(shard, str(tmp), metadata={"format": "pt"})
            tmp_files.append(tmp)
            for name, t in shard.items():
                weight_map[name] = str(k)
                total += t.numel() * t.element_size()
            del shard
        n = len(tmp_files)
        final = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        for tmp, name in zip(tmp_files, final):
            os.replace(tmp, target / name)
        weight_map = {t: final[int(k)] for t, k in weight_map.items()}
    finally:
        for tmp in tmp_files:
            tmp.unlink(missing_ok=True)
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    for f in CONFIG_FILES + TOKENIZER_FILES:
        if (delta_dir / f).is_file():
            shutil.copyfile(delta_dir / f, target / f)
    return weight_map


def _main(argv) -> int:
    from llmva_gebc import cli
    from llmva_gebc.errors import one_line

    p = argparse.ArgumentParser(prog="python -m llmva_gebc.models.apply_delta",
                                description="Vicuna = LLaMA + delta, tensor by tensor (FastChat's apply_delta).")
    p.add_argument("--base", required=True, help="LLaMA folder (Hugging Face format)")
    p.add_argument("--delta", required=True, help="delta folder (e.g. lmsys/vicuna-13b-delta-v0)")
    p.add_argument("--target", required=True, help="output folder for the Vicuna weights (safetensors)")
    p.add_argument("--max-shard-size", default="4GB", help="largest output shard (default 4GB)")
    p.add_argument("--no-check-tokenizer", action="store_true",
                   help="skip the tokenizer check (added tokens vs. embedding rows)")
    cli.add_debug_arg(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.debug, level=logging.WARNING)
    try:
        wm = apply_delta(a.base, a.delta, a.target, a.max_shard_size, check_tokenizer=not a.no_check_tokenizer)
    except DeltaError as e:
        raise UserError(one_line(e)) from e  # one line, exit 2 (cli.run)
    print(f"apply_delta: wrote {len(wm)} tensors in {len(set(wm.values()))} file(s) to {a.target}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
