"""Synthetic GEBC clips in the exact Kinetics-GEBC layout, for demos and end-to-end tests.

    python -m llmva_gebc.data.synthetic --out DIR [--num-videos 240] [--seed 0] [--workers 2]

writes ``DIR/videos/<11-char id>.mp4`` (``size``×``size`` px, 3–6 s at 8 fps, intra-only H.264 via
PyAV, or MPEG-4 part 2 where libx264 is missing: byte-identical for the same seed), ``DIR/annotations/{train,val,test}.json`` (70/15/15 of the
videos; ``test`` without captions, like the real test file), ``DIR/annotations/test_gt.json`` (the
test captions, as a challenge server would hold them) and ``DIR/annotations/video_info.json``.

Each clip shows a main object (a coloured circle, square or triangle, moving left/right/up/down or
staying still) and has 1–3 boundaries, each with one of the five real labels, and captions fixed by
what is drawn:

* Change of Color: subject "red circle", "red" -> "blue";
* Change of Action: subject "red circle", "moving left" -> "staying still";
* Change of Subject: a second object enters or leaves: subject "green triangle", "/0" -> "/1" (or back);
* Multiple: colour and shape ("red circle" -> "blue square") or colour and motion
  ("red and moving left" -> "blue and moving up") change at once;
* Change of Object Being Interacted (separate clips with 2–3 static targets): the main object touches
  one target, then another: "touching the blue square" -> "touching the yellow triangle".

8 colours × 3 shapes × 5 motions make captions varied enough that one constant caption scores low,
yet each is readable from the frames. Output is a deterministic function of ``seed`` and the options
(every clip draws from its own generator seeded by ``(seed, index)``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import string
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from llmva_gebc.errors import UserError

logger = logging.getLogger(__name__)

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 80, 235), "yellow": (235, 220, 30),
    "purple": (150, 40, 200), "orange": (245, 140, 20), "white": (240, 240, 240), "cyan": (30, 210, 220),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS: Dict[str, Tuple[int, int]] = {
    "moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1), "staying still": (0, 0),
}
BACKGROUNDS = ((20, 20, 20), (45, 45, 45), (15, 25, 50))
_ID_CHARS = string.ascii_letters + string.digits + "-_"
MIN_SEG = 8  # frames (1 s at 8 fps) between boundaries


# --------------------------------------------------------------------------------------- drawing
def _mask(shape: str, x: float, y: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    if shape == "square":
        s = 0.85 * r
        return (np.abs(xx - x) <= s) & (np.abs(yy - y) <= s)
    if shape == "triangle":  # apex up
        top, bottom = y - r, y + 0.8 * r
        half = r * (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - x) <= half)
    raise ValueError(f"unknown shape {shape!r}")


def render(frames_spec: List[List[Tuple[str, str, float, float]]], size: int, r: float, bg) -> np.ndarray:
    """[[(shape, colour, x, y), ...] per frame] -> uint8 (T, size, size, 3); later objects on top."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((len(frames_spec), size, size, 3), np.uint8)
    for t, objs in enumerate(frames_spec):
        img = out[t]
        img[:] = bg
        for shape, colour, x, y in objs:
            img[_mask(shape, x, y, r, yy, xx)] = COLORS[colour]
    return out


_CODECS = (
    ("libx264", {"qp": "12", "preset": "veryfast", "threads": "1",
                 "x264-params": "keyint=1:bframes=0:rc-lookahead=0:sync-lookahead=0:sliced-threads=0"}),
    ("mpeg4", {"qscale": "2", "threads": "1"}),
)


def encode_mp4(frames: np.ndarray, path: Path, fps: int) -> str:
    """Write uint8 (T, H, W, 3) frames to ``path`` atomically; returns the codec used.

    Intra-only (every frame a key frame), constant quantiser, one thread: no rate control, look-ahead
    or frame threading whose decisions could vary, so the same frames give byte-identical files.
    """
    import av

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.mp4")
    last = None
    for codec, opts in _CODECS:
        try:
            with av.open(str(tmp), "w") as c:
                s = c.add_stream(codec, rate=fps, options=dict(opts))
                s.codec_context.gop_size, s.codec_context.max_b_frames, s.thread_count = 1, 0, 1
                s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                for f in frames:
                    for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                        c.mux(pkt)
                for pkt in s.encode():
                    c.mux(pkt)
            os.replace(tmp, path)
            return codec
        except Exception as e:  # codec missing in this FFmpeg build: try the next one
            last = e
            tmp.unlink(missing_ok=True)
    raise RuntimeError(f"cannot encode {path} with libx264 or mpeg4: {last}")


# --------------------------------------------------------------------------------------- planning
def _segments(rng: np.random.Generator, n_frames: int, k: int) -> List[int]:
    """Boundary frame indices: k cut points, segments at least MIN_SEG frames."""
    lengths = np.full(k + 1, MIN_SEG)
    lengths += rng.multinomial(n_frames - MIN_SEG * (k + 1), np.ones(k + 1) / (k + 1))
    return list(np.cumsum(lengths)[:-1].astype(int))


class _Clip:
    def __init__(self, rng: np.random.Generator, size: int, fps: int) -> None:
        self.rng, self.size, self.fps = rng, size, fps
        self.r = size * 0.11
        self.speed = size / 64.0 * 1.2

    def pick(self, options, exclude=()):
        opts = [o for o in options if o not in exclude]
        return opts[int(self.rng.integers(len(opts)))]

    def room(self, x: float, y: float, motion: str) -> float:
        dx, dy = MOTIONS[motion]
        lo, hi = self.r + 1, self.size - 1 - self.r
        if dx < 0:
            return x - lo
        if dx > 0:
            return hi - x
        if dy < 0:
            return y - lo
        if dy > 0:
            return hi - y
        return float("inf")

    def feasible_motions(self, x, y, length, exclude=()) -> List[str]:
        return [m for m in MOTIONS if m not in exclude and self.room(x, y, m) >= 0.5 * length]

    def free_spot(self, avoid: List[Tuple[float, float]]) -> Tuple[float, float]:
        lo, hi = self.r + 1, self.size - 1 - self.r
        best, best_d = None, -1.0
        for _ in range(30):
            p = (float(self.rng.uniform(lo, hi)), float(self.rng.uniform(lo, hi)))
            d = min([np.hypot(p[0] - a[0], p[1] - a[1]) for a in avoid] or [1e9])
            if d > best_d:
                best, best_d = p, d
            if d >= 3 * self.r:
                break
        return best  # type: ignore[return-value]

    # ------------------------------------------------------------------ general clips
    def general(self, n_frames: int, k: int):
        rng = self.rng
        cuts = _segments(rng, n_frames, k)
        bounds = [0, *cuts, n_frames]
        lo, hi = self.r + 1, self.size - 1 - self.r
        x, y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        colour, shape = self.pick(list(COLORS)), self.pick(SHAPES)
        motion = self.pick(self.feasible_motions(x, y, bounds[1] - bounds[0]))
        extra: Optional[Tuple[str, str, float, float]] = None
        if rng.random() < 0.3:
            ex, ey = self.free_spot([(x, y)])
            extra = (self.pick(SHAPES, (shape,)), self.pick(list(COLORS), (colour,)), ex, ey)
        frames, boundaries = [], []
        for seg in range(k + 1):
            length = bounds[seg + 1] - bounds[seg]
            if seg > 0:  # a boundary at frame bounds[seg]: change the state
                must_move = self.room(x, y, motion) < 0.5 * length
                kinds = ["action", "multiple_motion"] if must_move else \
                    ["color", "action", "subject", "multiple_shape", "multiple_motion"]
                kind = kinds[int(rng.choice(len(kinds), p=_weights(kinds)))]
                subj = f"{colour} {shape}"
                if kind == "color":
                    new = self.pick(list(COLORS), (colour,))
                    b = ("Change of Color", subj, colour, new)
                    colour = new
                elif kind == "action":
                    new = self.pick(self.feasible_motions(x, y, length, (motion,)))
                    b = ("Change of Action", subj, motion, new)
                    motion = new
                elif kind == "subject":
                    if extra is None:
                        ex, ey = self.free_spot([(x, y)])
                        extra = (self.pick(SHAPES, (shape,)), self.pick(list(COLORS), (colour,)), ex, ey)
                        b = ("Change of Subject", f"{extra[1]} {extra[0]}", "/0", "/1")
                    else:
                        b = ("Change of Subject", f"{extra[1]} {extra[0]}", "/1", "/0")
                        extra = None
                elif kind == "multiple_shape":
                    nc, ns = self.pick(list(COLORS), (colour,)), self.pick(SHAPES, (shape,))
                    b = ("Multiple", subj, f"{colour} {shape}", f"{nc} {ns}")
                    colour, shape = nc, ns
                else:  # multiple_motion
                    nc, nm = self.pick(list(COLORS), (colour,)), self.pick(self.feasible_motions(x, y, length, (motion,)))
                    b = ("Multiple", subj, f"{colour} and {motion}", f"{nc} and {nm}")
                    colour, motion = nc, nm
                boundaries.append((bounds[seg], *b))
            v = min(self.speed, self.room(x, y, motion) / length) if motion != "staying still" else 0.0
            dx, dy = MOTIONS[motion]
            for _ in range(length):
                objs = [extra] if extra is not None else []
                frames.append([*objs, (shape, colour, x, y)])
                x, y = x + dx * v, y + dy * v
        return frames, boundaries

    # ------------------------------------------------------------------ interaction clips
    def interact(self, n_frames: int, k: int):
        rng = self.rng
        cuts = _segments(rng, n_frames, k)
        bounds = [0, *cuts, n_frames]
        c = self.size
        corners = [(0.25 * c, 0.25 * c), (0.75 * c, 0.25 * c), (0.25 * c, 0.75 * c), (0.75 * c, 0.75 * c)]
        order = rng.permutation(4)[: int(rng.integers(2, 4))]
        colour, shape = self.pick(list(COLORS)), self.pick(SHAPES)
        targets, used = [], {(shape, colour)}
        for i in order:
            while True:
                t = (self.pick(SHAPES), self.pick(list(COLORS), (colour,)))
                if t not in used:
                    break
            used.add(t)
            targets.append((t[0], t[1], *corners[i]))
        cur = int(rng.integers(len(targets)))
        frames, boundaries = [], []
        for seg in range(k + 1):
            if seg > 0:
                new = self.pick(range(len(targets)), (cur,))
                name = lambda t: f"touching the {t[1]} {t[0]}"  # noqa: E731
                boundaries.append((bounds[seg], "Change of Object Being Interacted", f"{colour} {shape}",
                                   name(targets[cur]), name(targets[new])))
                cur = new
            tx, ty = targets[cur][2], targets[cur][3]
            # touch the target from the clip centre's side, slightly overlapping its edge
            sx = tx + (1.7 * self.r if tx < c / 2 else -1.7 * self.r)
            for _ in range(bounds[seg + 1] - bounds[seg]):
                frames.append([*targets, (shape, colour, sx, ty)])
        return frames, boundaries


_KIND_W = {"color": 0.25, "action": 0.3, "subject": 0.2, "multiple_shape": 0.12, "multiple_motion": 0.13}


def _weights(kinds: List[str]) -> np.ndarray:
    w = np.array([_KIND_W[k] for k in kinds])
    return w / w.sum()


def make_clip(seed: int, index: int, size: int, fps: int):
    """-> (frames uint8 (T, size, size, 3), [(frame, label, subject, before, after)], duration s)."""
    rng = np.random.default_rng([seed, index])
    n_frames = int(rng.integers(3 * fps, 6 * fps + 1))
    k = int(min(rng.integers(1, 4), n_frames // MIN_SEG - 1))
    clip = _Clip(rng, size, fps)
    spec, bnds = clip.interact(n_frames, k) if rng.random() < 0.15 else clip.general(n_frames, k)
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return render(spec, size, clip.r, bg), bnds, n_frames / fps


def make_ids(seed: int, n: int) -> List[str]:
    rng = np.random.default_rng([seed, 10**9])
    ids: List[str] = []
    seen = set()
    while len(ids) < n:
        v = "".join(_ID_CHARS[i] for i in rng.integers(len(_ID_CHARS), size=11))
        if v not in seen:
            seen.add(v)
            ids.append(v)
    return ids


def _work(args) -> Tuple[str, List[Dict[str, Any]], float]:
    seed, index, vid, size, fps, videos_dir = args
    frames, bnds, duration = make_clip(seed, index, size, fps)
    encode_mp4(frames, Path(videos_dir) / f"{vid}.mp4", fps)
    recs = []
    times = [round(f / fps, 5) for f, *_ in bnds]
    for j, (f, label, subj, before, after) in enumerate(bnds):
        recs.append({
            "boundary_id": f"{vid}_{j}",
            "timestamp": times[j],
            "prev_timestamp": times[j - 1] if j > 0 else 0,
            "next_timestamp": times[j + 1] if j + 1 < len(times) else round(duration, 5),
            "label": label,
            "subject": subj,
            "status_before": before,
            "status_after": after,
            "action_of_cause": None,
            "caption": f"Subject: {subj} //Status_Before: {before} //Status_After: {after}",
        })
    return vid, recs, round(duration, 5)


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def generate(out: str | os.PathLike, num_videos: int = 240, seed: int = 0, size: int = 64, fps: int = 8,
             workers: int = 1, splits=(0.7, 0.15, 0.15)) -> Dict[str, Any]:
    """Write the dataset; returns a summary {split: (videos, boundaries), ...}."""
    if num_videos < 3:
        raise UserError("num_videos must be >= 3 (one per split)")
    if size % 2 or size < 32:
        raise UserError("size must be even and >= 32")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    ids = make_ids(seed, num_videos)
    jobs = [(seed, i, v, size, fps, str(out / "videos")) for i, v in enumerate(ids)]
    if workers > 1:
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"  # fork: no re-import
        with mp.get_context(method).Pool(workers) as pool:
            results = pool.map(_work, jobs, chunksize=8)
    else:
        results = [_work(j) for j in jobs]
    n_val = max(1, round(num_videos * splits[1]))
    n_test = max(1, round(num_videos * splits[2]))
    n_train = num_videos - n_val - n_test
    order = np.random.default_rng([seed, 7]).permutation(num_videos)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    info = {vid: dur for vid, _, dur in results}
    summary: Dict[str, Any] = {}
    for split, idx in parts.items():
        ann = {results[i][0]: results[i][1] for i in sorted(idx)}
        if split == "test":
            _write_json(ann, out / "annotations" / "test_gt.json")
            keep = ("boundary_id", "timestamp", "prev_timestamp", "next_timestamp", "label")
            ann = {v: [{k: b[k] for k in keep} for b in bs] for v, bs in ann.items()}
        _write_json(ann, out / "annotations" / f"{split}.json")
        summary[split] = (len(ann), sum(len(b) for b in ann.values()))
    _write_json(info, out / "annotations" / "video_info.json")
    return summary


def _main(argv) -> int:
    from llmva_gebc import cli

    p = argparse.ArgumentParser(prog="python -m llmva_gebc.data.synthetic", description="Write synthetic GEBC clips in the Kinetics-GEBC layout.")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--num-videos", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="frame width = height in pixels (even)")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="processes (2 is plenty)")
    cli.add_debug_arg(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.debug, level=30)
    s = generate(a.out, a.num_videos, a.seed, a.size, a.fps, a.workers)
    print("wrote " + ", ".join(f"{k}: {v[0]} videos / {v[1]} boundaries" for k, v in s.items()) + f" to {a.out}")
    return 0


def main(argv=None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
