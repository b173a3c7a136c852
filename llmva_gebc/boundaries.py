"""Automatic generic event boundaries: an unsupervised detector over per-frame features.

    python -m llmva_gebc.boundaries --cfg-path CONFIG.yaml --videos DIR --out predictions.json
        [--list FILE] [--device cpu] [--options model.boundary_detector.threshold=0.4 ...]

writes ``{video_id: [t1, t2, ...]}`` (seconds), the Kinetics-GEBD submission layout, which
``python -m llmva_gebc.eval.gebd`` scores.

The detector (settings: ``model.boundary_detector``, see :class:`llmva_gebc.config.BoundaryDetectorConfig`):

1. **frames**: ``T = clamp(round(duration * fps), 4, max_frames)`` frames, uniform over the clip
   (:func:`llmva_gebc.data.video.read_frames`; frame ``i`` is at ``(i + 0.5) * duration / T`` s, the
   centre of its slot), processed like the captioning frames;
2. **features** (``features``): ``qformer`` = the frozen image Q-Former tokens (T, Q, H), flattened;
   ``pixels`` = each frame average-pooled to 8×8 per colour channel (T, 192), a model-free baseline;
   or the name of a frame encoder (``llmva_gebc.models.frame_encoders``, e.g. ``efficientnet_lite0``,
   built with ``encoder_args``, e.g. ``{grid: 2}``) on the raw frames in [0, 1];
3. each feature dimension is centred over time and the whole (T, D) array scaled to unit RMS, so a
   score does not depend on the feature scale;
4. **change score** at the gap between frames ``t-1`` and ``t``: appearance change
   ``|| mean(x[t:t+w]) - mean(x[t-w:t]) ||`` plus ``motion_weight`` × speed change
   ``| mean(s[t:t+w]) - mean(s[t-w:t]) |`` with the feature speed ``s[i] = || x[i+1] - x[i] ||``
   (an object that starts, stops or turns changes how fast its frames' features move, while
   appearance keeps changing steadily during motion, so motion changes are no peaks of the first
   term); ``w = window`` seconds in frames (≥ 1), windows cut at the clip's ends. This is the
   windowed-difference score of unsupervised GEBD baselines, here on frozen features, untrained;
5. **smoothing**: a Gaussian of ``smooth`` seconds (σ), then the curve is divided by its maximum;
6. **peak picking**: local maxima ≥ ``threshold`` (relative to the clip's highest score), taken
   highest first, each suppressing the others closer than ``min_gap`` seconds; the boundary time is
   the gap's time, midway between the two frames.

A clip always gets at least one boundary (its highest peak): GEBC clips all have one.
The GEBC label the caption prompt needs cannot be read off a change score: it comes from the user or
``model.boundary_detector.label`` (default "Change of Action", the most frequent), and results say
which (``label_source``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

FEATURE_KINDS = ("qformer", "pixels")


def detector_settings(node: Optional[Mapping[str, Any]] = None, **override: Any) -> Dict[str, Any]:
    """The detector settings: defaults < ``node`` (``model.boundary_detector``) < ``override``."""
    import dataclasses

    from llmva_gebc.config import BoundaryDetectorConfig, ConfigError

    out = dataclasses.asdict(BoundaryDetectorConfig())
    for src in (node or {}), override:
        out.update({k: v for k, v in dict(src).items() if v is not None})
    for k in ("fps", "window", "smooth", "min_gap"):
        if not (isinstance(out[k], (int, float)) and math.isfinite(out[k]) and out[k] >= 0):
            raise ConfigError(f"model.boundary_detector.{k} must be a number >= 0, got {out[k]!r}")
    if not out["fps"] > 0:
        raise ConfigError(f"model.boundary_detector.fps must be > 0, got {out['fps']!r}")
    if not 0 <= float(out["threshold"]) <= 1:
        raise ConfigError(f"model.boundary_detector.threshold must be in [0, 1], got {out['threshold']!r}")
    return out


def num_detection_frames(duration: float, fps: float, max_frames: int) -> int:
    """Frames to decode for detection: ``clamp(round(duration * fps), 4, max_frames)``."""
    return int(min(max(round(duration * fps), 4), max_frames))


def frame_times(num_frames: int, duration: float) -> np.ndarray:
    """(T,) seconds: the centre of each of ``num_frames`` equal slots of the clip."""
    return (np.arange(num_frames) + 0.5) * duration / num_frames


def pixel_features(frames) -> np.ndarray:
    """(T, 3, S, S) processed frames → (T, 192): each frame average-pooled to 8×8 per channel."""
    import torch

    x = torch.as_tensor(frames, dtype=torch.float32)
    return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1).numpy()  # (T, 3*8*8)


def _window_means(x: np.ndarray, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """For each gap t = 1..N-1 of x (N, D): mean of x[t-w:t] and of x[t:t+w] (cut at the ends)."""
    c = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # (N+1, D)
    t = np.arange(1, len(x))
    lo, hi = np.maximum(t - w, 0), np.minimum(t + w, len(x))
    before = (c[t] - c[lo]) / (t - lo)[:, None]
    after = (c[hi] - c[t]) / (hi - t)[:, None]
    return before, after


def change_scores(feats: np.ndarray, window: int, motion_weight: float = 1.0) -> np.ndarray:
    """Change score (T-1,) at the gaps between frames of ``feats`` (T, ...) (steps 3–4 of the module doc).

    Raises ValueError for fewer than 2 frames."""
    x = np.asarray(feats, dtype=np.float64).reshape(len(feats), -1)  # (T, D)
    if len(x) < 2:
        raise ValueError(f"boundary detection needs at least 2 frames, got {len(x)}")
    x = x - x.mean(axis=0, keepdims=True)
    x = x / max(float(np.sqrt((x ** 2).mean())), 1e-12)
    w = max(int(window), 1)
    b, a = _window_means(x, w)
    score = np.linalg.norm(a - b, axis=1)  # (T-1,)
    if motion_weight and len(x) >= 3:
        speed = np.linalg.norm(np.diff(x, axis=0), axis=1)[:, None]  # (T-1, 1): speed[i] from frame i to i+1
        sb, sa = _window_means(speed, w)  # at the T-2 gaps of speed: gap s lies on frame s
        mv = np.abs(sa - sb)[:, 0]  # (T-2,)
        m = np.zeros(len(x) - 1)  # frame s is shared by the frame gaps s and s+1: half each
        m[:-1] += 0.5 * mv
        m[1:] += 0.5 * mv
        score = score + motion_weight * m
    return score


def gaussian_smooth(y: np.ndarray, sigma: float) -> np.ndarray:
    """``y`` convolved with a normalised Gaussian of ``sigma`` samples (edges renormalised)."""
    if sigma <= 0 or len(y) < 2:
        return y.copy()
    r = max(int(math.ceil(3 * sigma)), 1)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    num = np.convolve(y, k, mode="same")
    den = np.convolve(np.ones_like(y), k, mode="same")
    return num / den


def pick_peaks(curve: np.ndarray, times: np.ndarray, threshold: float, min_gap: float) -> List[int]:
    """Indices of local maxima of ``curve`` ≥ ``threshold``, highest first with ``min_gap`` (same unit
    as ``times``) suppression; returned in time order. The global maximum is always kept."""
    n = len(curve)
    if n == 0:
        return []
    left = np.concatenate([[-np.inf], curve[:-1]])
    right = np.concatenate([curve[1:], [-np.inf]])
    cand = [i for i in range(n) if curve[i] >= left[i] and curve[i] > right[i] and curve[i] >= threshold]
    cand.append(int(np.argmax(curve)))
    kept: List[int] = []
    for i in sorted(set(cand), key=lambda i: (-curve[i], i)):
        if all(abs(times[i] - times[j]) >= min_gap for j in kept):
            kept.append(i)
    return sorted(kept)


def detect(feats, duration: float, settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Boundaries of a clip from per-frame features ``feats`` (T, ...) uniform over ``duration`` s.

    Returns ``{"timestamps": [s, ...], "scores": [...], "curve": (T-1,) list, "gap_times": (T-1,)
    list}`` (scores relative to the clip's highest, in [0, 1]). Raises ValueError for < 2 frames or a
    non-positive duration."""
    s = detector_settings(settings)
    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise ValueError(f"the clip duration must be a positive number of seconds, got {duration!r}")
    feats = np.asarray(feats, dtype=np.float64)
    T = len(feats)
    step = duration / max(T, 1)  # seconds per frame
    raw = change_scores(feats, round(s["window"] / step), s["motion_weight"])
    curve = gaussian_smooth(raw, s["smooth"] / step)
    curve = curve / max(float(curve.max()), 1e-12)
    gaps = frame_times(T, duration)[:-1] + 0.5 * step  # (T-1,) time of each gap
    idx = pick_peaks(curve, gaps, float(s["threshold"]), float(s["min_gap"]))
    return {"timestamps": [round(float(gaps[i]), 4) for i in idx], "scores": [round(float(curve[i]), 4) for i in idx],
            "curve": curve.tolist(), "gap_times": gaps.tolist()}


# ------------------------------------------------------------------------------------------ videos
class BoundaryDetector:
    """Video file → boundaries, with the frozen image encoder and processor of a config.

    ``cfg``: a loaded config (``model.boundary_detector``, ``model.encoder`` and the processor of
    ``datasets.<dataset>``, default the GEBC one); ``encoder``: an already built frozen encoder to
    reuse (else built on first use, only for ``features: qformer``); ``settings``: overrides of
    ``model.boundary_detector``."""

    def __init__(self, cfg, dataset: Optional[str] = None, device: Any = "cpu", encoder=None,
                 **settings: Any) -> None:
        from llmva_gebc.config import as_plain

        self.cfg = cfg
        self.settings = detector_settings(as_plain(cfg.model.boundary_detector), **settings)
        kind = self.settings["features"]
        if kind not in FEATURE_KINDS:
            from llmva_gebc.models.frame_encoders import FRAME_ENCODERS

            if kind not in FRAME_ENCODERS:
                from llmva_gebc.config import ConfigError

                raise ConfigError(f"model.boundary_detector.features must be one of {', '.join(FEATURE_KINDS)} "
                                 f"or a frame encoder ({', '.join(FRAME_ENCODERS.names())}), got {kind!r}")
        from llmva_gebc.config import pick_dataset

        ds = pick_dataset(cfg, dataset)[1]
        self.processor_cfg = ds.vis_processor if ds is not None else None
        self.device = device
        self._encoder = encoder
        self._processor = None

    @property
    def processor(self):
        if self._processor is None:
            from llmva_gebc.data.processors import build_processor

            self._processor = build_processor(self.processor_cfg, training=False)
        return self._processor

    @property
    def encoder(self):
        """The frozen image encoder (``qformer``) or frame encoder (a registry name), built on first use."""
        if self._encoder is None:
            if self.settings["features"] == "qformer":
                from llmva_gebc.models.encoder import build_encoder

                self._encoder = build_encoder(self.cfg.model.encoder, device=self.device)
            else:
                from llmva_gebc.models.frame_encoders import build_frame_encoder

                self._encoder = build_frame_encoder(self.settings["features"], device=self.device,
                                                    **dict(self.settings.get("encoder_args") or {}))
        return self._encoder

    def frame_features(self, video_path: str | os.PathLike, duration: float) -> np.ndarray:
        """(T, D) float32 features of ``T = num_detection_frames(duration, ...)`` uniform frames."""
        import torch

        from llmva_gebc.data.video import read_frames

        s = self.settings
        T = num_detection_frames(duration, float(s["fps"]), int(s["max_frames"]))
        raw = read_frames(video_path, T)  # (T, H, W, 3) uint8
        if s["features"] not in FEATURE_KINDS:  # a frame encoder: raw RGB in [0, 1], its own resizing
            x = torch.from_numpy(np.ascontiguousarray(raw)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
            with torch.no_grad():
                return self.encoder(x).float().cpu().numpy()  # (T, dim)
        frames = self.processor(raw)  # (T, 3, S, S)
        if s["features"] == "pixels":
            return pixel_features(frames)
        enc = self.encoder
        with torch.no_grad():
            q = enc(frames.to(device=enc.device, dtype=enc.dtype)).float().cpu()  # (T, Q, H)
        return q.flatten(1).numpy()  # (T, Q*H)

    def __call__(self, video_path: str | os.PathLike, duration: float) -> Dict[str, Any]:
        """:func:`detect` on the frames of ``video_path`` (``duration`` seconds)."""
        return detect(self.frame_features(video_path, duration), duration, self.settings)


# ------------------------------------------------------------------------------------------ CLI
def _main(argv: Sequence[str]) -> int:
    from llmva_gebc import cli
    from llmva_gebc.api import probe_duration
    from llmva_gebc.config import ConfigError, add_config_args, load_config
    from llmva_gebc.data.video import VideoDecodeError
    from llmva_gebc.errors import UserError, one_line
    from llmva_gebc.extract import list_videos

    p = argparse.ArgumentParser(prog="python -m llmva_gebc.boundaries",
                                description="Detect generic event boundaries; write {video_id: [seconds]}.")
    add_config_args(p)
    p.add_argument("--videos", required=True, help="folder of video files (<video_id>.mp4)")
    p.add_argument("--list", default=None, help="optional file of video ids or paths, one per line")
    p.add_argument("--out", required=True, help="predictions JSON to write")
    p.add_argument("--dataset", default=None, help="datasets.<name> whose processor to use (default: gebc)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    cli.add_debug_arg(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.debug, level=logging.WARNING)
    from llmva_gebc.fileio import atomic_write_bytes, check_writable_dir

    out = Path(a.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the predictions JSON file to write")
    check_writable_dir(out.parent, "--out folder")  # before the (long) detection
    try:
        cfg = load_config(a.cfg_path, a.options)
        from llmva_gebc.api import parse_device

        det = BoundaryDetector(cfg, a.dataset, device=parse_device(a.device))
        preds: Dict[str, List[float]] = {}
        for v in list_videos(a.videos, a.list):
            try:
                preds[Path(v).stem] = det(v, probe_duration(v))["timestamps"]
            except ValueError as e:  # e.g. a clip whose frames carry no time (duration 0): name the video
                if isinstance(e, UserError):
                    raise
                raise UserError(f"{v}: {one_line(e)}") from e
    except (VideoDecodeError, ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        raise UserError(one_line(e)) from e  # one line, exit 2 (cli.run)
    atomic_write_bytes(out, (json.dumps(preds, indent=1) + "\n").encode("utf-8"))
    print(f"boundaries: {sum(map(len, preds.values()))} boundaries in {len(preds)} videos -> {out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
