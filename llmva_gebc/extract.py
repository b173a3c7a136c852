"""Offline feature extraction: video files -> ``<out>/<video_id>.npy`` image Q-Former tokens (T, Q, H).

    python -m llmva_gebc.extract --cfg-path train_configs/tiny.yaml --videos DIR --out DIR \
        [--list FILE] [--dataset gebc] [--batch-size 64] [--device cpu] [--options key=value ...]

* Frames: ``datasets.<dataset>.vis_processor`` (``num_frames``, processor ``name``/``image_size``), T
  frames uniformly over the whole clip (as the reference extracts them; ``sampling: boundary`` does
  not apply to per-video features and is ignored here with a warning).
* Encoder: ``build_encoder(cfg.model.encoder)`` in ``--precision`` (default: the config's
  ``model.encoder.precision``); frames of several videos are batched together (``--batch-size`` frames
  per forward).
* Decoding: ``--num-workers`` DataLoader worker processes decode and preprocess the next videos while
  the encoder runs (0: in the main process); the outputs do not depend on it.
* Resumable: a video whose ``.npy`` exists and reads back as (T, Q, H) finite numbers is skipped; one
  that does not (e.g. a 0-byte file another tool left) is redone and listed under ``"redone"``. Each
  ``.npy`` is written to a temporary file in the output folder and renamed into place, so an
  interrupted run never leaves a partial file.
* A video that fails (missing, corrupt, truncated: fewer frames decode than its header declares,
  encoder error) is recorded in ``<out>/extract_report.json`` (``{"failed": [{"video", "error"}],
  ...}``) and the run goes on; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from llmva_gebc.data.gebc import VIDEO_EXTS, DataError, check_q_tokens, find_video, load_feature_array
from llmva_gebc.data.video import read_frames
from llmva_gebc.errors import UserError

logger = logging.getLogger(__name__)
REPORT_NAME = "extract_report.json"


def atomic_save_npy(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_report(report: Dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / REPORT_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)
    return path


def output_problem(path: Path, num_frames: int, encoder: Any) -> Optional[str]:
    """Why an existing output cannot count as done (unreadable or half-written file, non-finite values,
    wrong shape), or None. The shape is checked as far as it is known: T = ``num_frames`` (when > 0),
    and (Q, H) from an image Q-Former encoder (``query_tokens``, ``hidden_size``) or d from a frame
    encoder (``dim``)."""
    try:
        arr = load_feature_array(path)
        q = getattr(encoder, "query_tokens", None)
        if isinstance(q, torch.Tensor):  # image Q-Former: (T, Q, H)
            check_q_tokens(arr, path, frames=num_frames or None, queries=int(q.shape[1]),
                           hidden=getattr(encoder, "hidden_size", None))
            return None
    except DataError as e:
        return str(e)
    t, d = num_frames or None, getattr(encoder, "dim", None)  # frame encoder: (t, d)
    if arr.ndim < 2 or arr.shape[0] < 1 or (t and arr.shape[0] != t) or (d and arr.shape[-1] != d):
        return f"features file {path}: expected shape ({t or 't'}, ..., {d or 'd'}), got {tuple(arr.shape)}"
    return None


def list_videos(videos_dir: str | os.PathLike, list_file: Optional[str | os.PathLike] = None) -> List[Path]:
    """Videos to process: every video file directly in ``videos_dir``, or the ids/paths in ``list_file``.

    Ids in the list without a file come back as ``<videos_dir>/<id>.mp4`` (then reported as missing).
    """
    videos_dir = Path(videos_dir)
    if list_file is None:
        if not videos_dir.is_dir():
            raise FileNotFoundError(f"videos dir not found: {videos_dir}"
                                    + (" (it is a file; give the folder that holds the videos)" if videos_dir.exists() else ""))
        found = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_EXTS and p.is_file())
        if not found:  # a wrong folder would otherwise "succeed" with nothing done
            raise UserError(f"no video files ({', '.join(VIDEO_EXTS)}) in {videos_dir}")
        _check_unique_ids(found, str(videos_dir))
        return found
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"--list file not found: {list_file}" + (" (it is a directory)" if list_file.is_dir() else ""))
    out = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        if p.suffix.lower() in VIDEO_EXTS:
            out.append(p if p.is_absolute() or p.is_file() else videos_dir / p)
        else:
            out.append(find_video(videos_dir, line) or videos_dir / f"{line}.mp4")
    if not out:
        raise UserError(f"--list file {list_file} names no videos")
    _check_unique_ids(out, str(list_file))
    return out


def _check_unique_ids(paths: Sequence[Path], where: str) -> None:
    """Each output is ``<video id>.npy`` with the id = the file stem: two videos of one id (``a.mp4`` and
    ``a.mkv``) would silently overwrite each other's features."""
    seen: Dict[str, Path] = {}
    for p in paths:
        if p.stem in seen and seen[p.stem] != p:
            raise UserError(f"{where}: two videos have the id '{p.stem}' ({seen[p.stem].name}, {p.name}); the video id "
                            "is the file name without extension, so their features would overwrite each other")
        seen[p.stem] = p


class DecodedVideos(torch.utils.data.Dataset):
    """Item i: (path, frames (T, 3, S, S) or None, error or None) for ``paths[i]``: one video decoded
    (``read`` or ``read_frames``) and preprocessed, in a DataLoader worker when there are workers."""

    def __init__(self, paths: Sequence[Path], processor: Callable[[np.ndarray], torch.Tensor], num_frames: int,
                 read: Optional[Callable[[Path], np.ndarray]] = None) -> None:
        self.paths, self.processor, self.num_frames, self.read = list(paths), processor, num_frames, read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            raw = self.read(path) if self.read is not None else read_frames(path, self.num_frames)  # (T, h, w, 3)
            return path, self.processor(raw), None  # frames (T, 3, S, S)
        except Exception as e:
            return path, None, f"{type(e).__name__}: {e}"


def decoded(ds: DecodedVideos, num_workers: int = 0, pin_memory: bool = False):
    """Iterate ``ds`` in order; with ``num_workers`` > 0 the videos are decoded in that many worker
    processes, a few videos ahead of the consumer (the encoder)."""
    if num_workers <= 0:
        return (ds[i] for i in range(len(ds)))
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers,
                                            pin_memory=pin_memory, prefetch_factor=4))


def extract_features(
    encoder: torch.nn.Module,
    video_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    processor: Callable[[np.ndarray], torch.Tensor],
    num_frames: int,
    batch_size: int = 64,
    *,
    overwrite: bool = False,
    save_dtype: str = "float32",
    progress: bool = True,
    write_report: bool = True,
    read: Optional[Callable[[Path], np.ndarray]] = None,
    num_workers: int = 0,
) -> Dict[str, Any]:
    """Extract (T, Q, H) tokens for each video into ``out_dir/<stem>.npy``; returns the report dict.

    ``encoder``: frames (N, 3, S, S) -> (N, Q, H) with ``.device`` and ``.dtype`` (or (N, d): any
    per-frame output, saved per video as (T, ...)). ``read``: path -> uint8 (T, H, W, 3) frames of one
    video (default ``read_frames(path, num_frames)``), run in ``num_workers`` DataLoader workers
    (:func:`decoded`) while the encoder works. Failures are recorded (``report["failed"]``) and the run
    goes on.
    """
    from tqdm import tqdm

    from llmva_gebc.fileio import check_writable_dir

    out_dir = check_writable_dir(out_dir, "output folder")  # before any decoding: a file there, a read-only disk
    np_dtype = {"float32": np.float32, "float16": np.float16}[save_dtype]
    report: Dict[str, Any] = {"videos": len(video_paths), "extracted": 0, "skipped": 0, "failed": [], "redone": [],
                              "frames": 0, "seconds": 0.0, "out_dir": str(out_dir)}
    pending: List[Tuple[str, torch.Tensor]] = []  # (video id, frames (T, 3, S, S))
    t0 = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        try:
            # Consecutive videos whose frames have one shape are encoded together; frames of another shape
            # (a processor that keeps each video's own size) go through in their own batches.
            outs = []
            for _, run in itertools.groupby(pending, key=lambda item: tuple(item[1].shape[1:])):
                frames = torch.cat([f for _, f in run])  # (n_frames, 3, S, S)
                for i in range(0, len(frames), batch_size):
                    x = frames[i : i + batch_size].to(device=encoder.device, dtype=encoder.dtype)
                    with torch.no_grad():
                        outs.append(encoder(x).float().cpu())  # (n, Q, H)
            tokens = torch.cat(outs)  # (sum T, Q, H)
        except Exception as e:  # e.g. out of memory: these videos fail, the run goes on
            for vid, _ in pending:
                report["failed"].append({"video": vid, "error": f"encoder: {type(e).__name__}: {e}"})
            pending.clear()
            return
        start = 0
        for vid, f in pending:
            arr = tokens[start : start + len(f)].numpy().astype(np_dtype)  # (T, Q, H)
            start += len(f)
            try:
                atomic_save_npy(arr, out_dir / f"{vid}.npy")
            except OSError as e:
                report["failed"].append({"video": vid, "error": f"write: {e}"})
                continue
            report["extracted"] += 1
            report["frames"] += len(f)
        pending.clear()

    try:
        todo: List[Path] = []
        for path in map(Path, video_paths):
            vid = path.stem
            out = out_dir / f"{vid}.npy"
            if not overwrite and out.is_file():
                problem = output_problem(out, num_frames, encoder)
                if problem is None:
                    report["skipped"] += 1
                    continue
                logger.warning("redoing %s: %s", vid, problem)
                report["redone"].append({"video": vid, "reason": problem})
            todo.append(path)
        pin = torch.device(encoder.device).type == "cuda"
        items = decoded(DecodedVideos(todo, processor, num_frames, read), num_workers, pin_memory=pin)
        for path, frames, error in tqdm(items, total=len(todo), desc="extract", unit="video", disable=not progress):
            if error is not None:
                report["failed"].append({"video": str(path), "error": error})
                continue
            vid = path.stem
            pending.append((vid, frames))
            if sum(len(f) for _, f in pending) >= batch_size:
                flush()
        flush()
    finally:  # also on KeyboardInterrupt: what is written stays, the report says what happened
        report["seconds"] = round(time.perf_counter() - t0, 3)
        if write_report:
            _write_report(report, out_dir)
    return report


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _main(argv: Sequence[str]) -> int:
    from llmva_gebc import cli
    from llmva_gebc.config import add_config_args, load_config, pick_dataset
    from llmva_gebc.data.processors import build_processor
    from llmva_gebc.models.encoder import build_encoder

    p = argparse.ArgumentParser(prog="python -m llmva_gebc.extract",
                                description="Extract image Q-Former tokens for every video (resumable).")
    add_config_args(p)
    p.add_argument("--videos", required=True, help="folder of video files (<video_id>.mp4)")
    p.add_argument("--out", required=True, help="output folder for <video_id>.npy")
    p.add_argument("--list", default=None, help="optional file of video ids or paths, one per line")
    p.add_argument("--dataset", default=None, help="datasets.<name> whose vis_processor to use (default: the gebc one, else the first)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per encoder forward")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                   help="encoder ViT precision (default: model.encoder.precision; fp16 falls back to fp32 on CPU)")
    p.add_argument("--num-workers", type=int, default=min(4, _usable_cpus()),
                   help="DataLoader worker processes decoding videos while the encoder runs "
                        "(0: none; default: 4, or fewer where fewer CPUs are usable)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: run.device)")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--overwrite", action="store_true", help="recompute videos whose .npy exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none without a terminal)")
    cli.add_debug_arg(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.debug)

    cfg = load_config(a.cfg_path, a.options)
    ds_cfg = pick_dataset(cfg, a.dataset)[1]
    proc_cfg = ds_cfg.vis_processor if ds_cfg is not None else None
    processor = build_processor(proc_cfg, training=False)
    num_frames = int(proc_cfg.num_frames) if proc_cfg is not None else 12
    if proc_cfg is not None and proc_cfg.sampling != "uniform":
        logger.warning("vis_processor.sampling=%s ignored: per-video features use uniform sampling", proc_cfg.sampling)
    from llmva_gebc.api import parse_device

    device = parse_device(a.device or cfg.run.device)  # a user error for 'tpu', or cuda without CUDA
    if a.batch_size < 1 or a.num_workers < 0:
        p.error("--batch-size must be >= 1 and --num-workers >= 0")
    if a.precision is not None:
        cfg.model.encoder.precision = a.precision
    encoder = build_encoder(cfg.model.encoder, device=device)
    videos = list_videos(a.videos, a.list)
    rep = extract_features(encoder, videos, a.out, processor, num_frames, a.batch_size, overwrite=a.overwrite,
                           save_dtype=a.save_dtype, progress=not a.no_progress and cli.progress_enabled(),
                           num_workers=a.num_workers)
    secs = max(rep["seconds"], 1e-9)
    print(
        f"extract: {rep['extracted']} extracted ({len(rep['redone'])} over a bad existing output),"
        f" {rep['skipped']} skipped (already done), {len(rep['failed'])} failed"
        f" of {rep['videos']} in {rep['seconds']:.1f}s ({rep['extracted'] / secs:.2f} videos/s,"
        f" {rep['frames'] / secs:.1f} frames/s); report: {Path(a.out) / REPORT_NAME}"
    )
    for f in rep["failed"][:10]:
        print(f"  FAILED {f['video']}: {f['error']}", file=sys.stderr)
    return 1 if rep["failed"] else 0


def main(argv=None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
