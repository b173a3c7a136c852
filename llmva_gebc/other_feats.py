"""Other features (the second branch of the adapter): extract them, or check ones made elsewhere.

    python -m llmva_gebc.other_feats extract --encoder efficientnet_lite0 --videos DIR --out DIR \
        [--fps 2] [--grid 1] [--image-size 224] [--path CLIP_DIR] [--list FILE] [--batch-size 64] \
        [--device cpu] [--save-dtype float32] [--overwrite] [--no-progress]
    python -m llmva_gebc.other_feats check --dir DIR --dim D --annotations SPLIT.json [--video-info FILE]
    python -m llmva_gebc.other_feats check --cfg-path CONFIG --split val      # every other_feats entry

**Format** (what ``datasets.<name>.other_feats[i].dir`` holds and :class:`llmva_gebc.data.gebc.GEBCDataset`
reads): one file per video, ``<dir>/<youtube_id>.npy`` (or ``.pkl`` of an array), float, shape
``(t, d)``: ``t`` ≥ 1 time steps in clip order (any count: features of different videos need not
match), ``d`` = the entry's ``dim``. At load time each is resampled to ``max_seq_len`` steps (96 in
the recipe) by nearest neighbour at positions ``i·(t−1)/(S−1)`` (``resample_nearest``, as the
reference does), and the entries are concatenated on channels in config order.

**extract**: frames sampled at ``--fps`` frames per second over the whole clip (``t = max(1,
round(frames · fps / video_fps))``, the first frame of each of t equal segments, as
``llmva_gebc.data.video.sample_indices`` picks them), encoded one vector per frame by a registered
frame encoder (:mod:`llmva_gebc.models.frame_encoders`). Resumable and atomic like
``python -m llmva_gebc.extract`` (same loop: an existing ``.npy`` is skipped, each file is renamed into
place, failures go to ``<out>/extract_report.json`` and the exit status is 1).

**Features made elsewhere** (InternVideo, Omnivore, as the original recipe uses): write them in the
format above, one ``.npy`` per YouTube id, then run ``check``: it lists every video of the split that
has no file, every file of the wrong shape (naming the file, the shape found and the one expected) and
non-finite values; exit status 0 when all is well, 2 otherwise.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- extraction
def probe_video(path: str | os.PathLike) -> Tuple[int, float]:
    """(frame count, frames per second) of a video: decord first, then the frames PyAV decodes."""
    try:
        import decord

        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return len(vr), float(vr.get_avg_fps())
    except Exception:  # decord missing or cannot read it (it refuses truncated files): PyAV counts
        from llmva_gebc.data.video import probe_video as decode_video

        info = decode_video(path)
        return info.frames, info.fps or 0.0


def num_steps(num_total: int, video_fps: float, fps: float) -> int:
    """Frames to sample at ``fps`` over a clip of ``num_total`` frames at ``video_fps`` (at least 1)."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if video_fps <= 0:  # unknown rate: every frame
        return max(1, num_total)
    return max(1, min(num_total, round(num_total * fps / video_fps)))


def read_at_rate(path: str | os.PathLike, fps: float) -> np.ndarray:
    """uint8 (t, H, W, 3): frames at ``fps`` per second over the whole clip (see the module docstring)."""
    from llmva_gebc.data.video import read_frames

    n, vfps = probe_video(path)
    return read_frames(path, num_steps(n, vfps, fps))


def to_unit(frames, image_size: Optional[int] = None) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, S, S) in [0, 1]: what frame encoders take.

    ``image_size``: resize to (S, S) here (bilinear, as the encoders' own resize), so that videos of
    different sizes can share an encoder batch; None keeps (H, W)."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    x = x.permute(0, 3, 1, 2).float().div(255.0).contiguous()  # (T, 3, H, W)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x


def extract_other_features(encoder: torch.nn.Module, video_paths: Sequence[str | os.PathLike],
                           out_dir: str | os.PathLike, fps: float = 2.0, batch_size: int = 64,
                           **kw: Any) -> Dict[str, Any]:
    """Write ``out_dir/<video_id>.npy`` of shape (t, encoder.dim) per video; returns the report dict.

    ``kw``: ``overwrite``, ``save_dtype``, ``progress``, ``write_report`` of
    :func:`llmva_gebc.extract.extract_features` (the same resumable, atomic loop).
    """
    from llmva_gebc.extract import extract_features

    size = getattr(encoder, "image_size", None)
    return extract_features(encoder, video_paths, out_dir, functools.partial(to_unit, image_size=size),
                            num_frames=0, batch_size=batch_size,
                            read=lambda p: read_at_rate(p, fps), **kw)


# --------------------------------------------------------------------------------------- checking
def check_other_features(feat_dir: str | os.PathLike, dim: int, video_ids: Sequence[str],
                         name: str = "other") -> List[str]:
    """Problems (one line each, naming the file or video) of ``feat_dir`` for ``video_ids``; [] if none.

    Reads each file with the dataset's reader (``load_feature_array``), so what passes here loads in
    training. Checks: a file per video, shape (t ≥ 1, ``dim``), finite values.
    """
    from llmva_gebc.data.gebc import DataError, load_feature_array

    feat_dir = Path(feat_dir)
    if not feat_dir.is_dir():
        return [f"{name}: features dir not found: {feat_dir}"]
    problems = []
    for vid in video_ids:
        path = next((feat_dir / f"{vid}{e}" for e in (".npy", ".pkl") if (feat_dir / f"{vid}{e}").is_file()), None)
        if path is None:
            problems.append(f"{name}: missing video '{vid}': no {feat_dir / vid}.npy (or .pkl)")
            continue
        try:
            arr = load_feature_array(path)
        except DataError as e:
            problems.append(f"{name}: {e}")
            continue
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != dim:
            problems.append(f"{name}: wrong shape in {path}: {tuple(arr.shape)}, expected (t, {dim}) with t >= 1")
        elif not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            problems.append(f"{name}: non-numeric or non-finite values in {path} (dtype {arr.dtype})")
    return problems


def split_video_ids(annotations: str | os.PathLike, video_info: Optional[str | os.PathLike] = None) -> List[str]:
    """Video ids of a split's annotation file, in file order; with ``video_info``, only those it lists
    (a video without a duration yields no samples, so it needs no features)."""
    from llmva_gebc.data.gebc import load_annotations, read_json

    ids = list(dict.fromkeys(b["video_id"] for b in load_annotations(annotations, with_captions=False)))
    if video_info is not None:
        info = read_json(video_info, "video_info")
        if not isinstance(info, dict):
            from llmva_gebc.data.gebc import DataError

            raise DataError(f"{video_info}: expected a JSON object {{youtube_id: duration}}, got {type(info).__name__}")
        ids = [v for v in ids if v in info]
    return ids


def _check_main(a: argparse.Namespace) -> int:
    from llmva_gebc.data.gebc import resolve_path
    from llmva_gebc.errors import UserError

    entries = []  # (name, dir, dim, annotations, video_info)
    if a.cfg_path:
        from llmva_gebc.config import load_config

        cfg = load_config(a.cfg_path, a.options)
        for ds_name, ds in cfg.datasets.items():
            if a.split not in (ds.annotations or {}):
                continue
            for of in ds.other_feats:
                entries.append((f"datasets.{ds_name}.other_feats.{of.name}", resolve_path(ds.root, of.dir),
                                int(of.dim), resolve_path(ds.root, ds.annotations[a.split]),
                                resolve_path(ds.root, ds.video_info)))
        if not entries:
            raise UserError(f"{a.cfg_path}: no datasets.<name>.other_feats for split '{a.split}' "
                            f"(datasets with that split: {[n for n, d in cfg.datasets.items() if a.split in (d.annotations or {})]})")
    else:
        if not (a.dir and a.dim is not None and a.annotations):
            raise UserError("check: give --cfg-path (and --split), or --dir, --dim and --annotations")
        if a.dim < 1:
            raise UserError(f"check: --dim must be an integer >= 1, got {a.dim}")
        entries.append((Path(a.dir).name, Path(a.dir), a.dim, Path(a.annotations), a.video_info))
    bad = 0
    for name, d, dim, ann, info in entries:
        ids = split_video_ids(ann, info)
        problems = check_other_features(d, dim, ids, name)
        for p in problems[: a.max_lines]:
            print(p, file=sys.stderr)
        if len(problems) > a.max_lines:
            print(f"{name}: ... and {len(problems) - a.max_lines} more", file=sys.stderr)
        print(f"{name}: {d}: {len(ids) - len(problems)} of {len(ids)} videos OK (shape (t, {dim}))"
              + (f", {len(problems)} problems" if problems else ""))
        bad += len(problems)
    return 2 if bad else 0


def _extract_main(a: argparse.Namespace) -> int:
    import math

    from llmva_gebc.errors import UserError
    from llmva_gebc.extract import REPORT_NAME, list_videos
    from llmva_gebc.models.frame_encoders import build_frame_encoder

    for flag, value, ok in (("--fps", a.fps, math.isfinite(a.fps) and a.fps > 0), ("--batch-size", a.batch_size, a.batch_size >= 1),
                            ("--grid", a.grid, a.grid >= 1), ("--image-size", a.image_size, a.image_size is None or a.image_size >= 1)):
        if not ok:
            raise UserError(f"{flag} must be {'a number > 0' if flag == '--fps' else 'an integer >= 1'}, got {value!r}")

    from llmva_gebc import cli
    from llmva_gebc.api import parse_device

    kw: Dict[str, Any] = {"device": parse_device(a.device), "dtype": a.dtype}
    if a.encoder == "efficientnet_lite0":
        kw.update(grid=a.grid, image_size=a.image_size or 224)
        if a.path:
            kw["weights"] = a.path
    elif a.path:
        kw["path"] = a.path
    encoder = build_frame_encoder(a.encoder, **kw)
    rep = extract_other_features(encoder, list_videos(a.videos, a.list), a.out, fps=a.fps, batch_size=a.batch_size,
                                 overwrite=a.overwrite, save_dtype=a.save_dtype,
                                 progress=not a.no_progress and cli.progress_enabled())
    secs = max(rep["seconds"], 1e-9)
    print(f"extract {a.encoder} (dim {encoder.dim}): {rep['extracted']} extracted, {rep['skipped']} skipped, "
          f"{len(rep['failed'])} failed of {rep['videos']} in {rep['seconds']:.1f}s ({rep['frames'] / secs:.1f} "
          f"frames/s); report: {Path(a.out) / REPORT_NAME}")
    for f in rep["failed"][:10]:
        print(f"  FAILED {f['video']}: {f['error']}", file=sys.stderr)
    return 1 if rep["failed"] else 0


def _main(argv: Sequence[str]) -> int:
    from llmva_gebc import cli
    from llmva_gebc.errors import UserError, one_line
    from llmva_gebc.models.frame_encoders import FRAME_ENCODERS

    p = argparse.ArgumentParser(prog="python -m llmva_gebc.other_feats", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="extract (t, d) features per video with a frame encoder")
    e.add_argument("--encoder", required=True, choices=FRAME_ENCODERS.names())
    e.add_argument("--videos", required=True, help="folder of video files (<video_id>.mp4)")
    e.add_argument("--out", required=True, help="output folder for <video_id>.npy")
    e.add_argument("--list", default=None, help="optional file of video ids or paths, one per line")
    e.add_argument("--fps", type=float, default=2.0, help="frames per second sampled over the clip (default 2)")
    e.add_argument("--path", default=None, help="clip_vit: model folder; efficientnet_lite0: weights file "
                                                "(default: the packaged ImageNet weights)")
    e.add_argument("--grid", type=int, default=1, help="efficientnet_lite0: pool to grid x grid (dim grid²·1280)")
    e.add_argument("--image-size", type=int, default=None, help="efficientnet_lite0 input size (default 224)")
    e.add_argument("--batch-size", type=int, default=64, help="frames per encoder forward")
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    e.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    e.add_argument("--save-dtype", default="float32", choices=["float32", "float16"])
    e.add_argument("--overwrite", action="store_true", help="recompute videos whose .npy exists")
    e.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("check", help="check a folder of (t, d) features against a split")
    c.add_argument("--dir", default=None, help="features folder (<video_id>.npy)")
    c.add_argument("--dim", type=int, default=None, help="expected feature dim d")
    c.add_argument("--annotations", default=None, help="the split's annotation JSON")
    c.add_argument("--video-info", default=None, help="video_info.json: only videos it lists need features")
    c.add_argument("--cfg-path", default=None, help="check every datasets.*.other_feats entry of this config")
    c.add_argument("--split", default="val", help="with --cfg-path: train | val | test (default val)")
    c.add_argument("--options", "--cfg-options", dest="options", nargs="+", default=[], metavar="KEY=VALUE")
    c.add_argument("--max-lines", type=int, default=20, help="problems printed per entry")
    cli.add_debug_arg(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.debug, level=logging.WARNING)
    from llmva_gebc.data.gebc import DataError

    try:
        return _extract_main(a) if a.cmd == "extract" else _check_main(a)
    except (DataError, FileNotFoundError, ValueError, KeyError) as err:
        raise UserError(one_line(err)) from err  # one line, exit 2 (cli.run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
