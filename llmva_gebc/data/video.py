"""Decoding T frames of a video file: decord first, PyAV as the fallback.

Frame choice (``sample_indices``):

* ``"uniform"`` (the reference): T frames over the WHOLE clip, as LAVIS / Video-LLaMA ``load_video``
  does: ``np.arange(0, n, n / T).astype(int)``, i.e. the first frame of each of T equal segments. We
  compute the same indices as ``floor(i * n / T)`` for i in 0..T-1, which always gives exactly T
  (the reference's float ``arange`` can give T+1). A clip shorter than T frames repeats frames
  (the reference would return fewer frames, which cannot be batched).
* ``"boundary"``: T frames uniformly over ``[boundary - window, boundary + window]`` seconds
  (clipped to the clip), for boundary-centred experiments; not what the original does.

Frames come back at their stored size as uint8 (T, H, W, 3) RGB; resizing to 224 and normalising is
the processor's job (``llmva_gebc.data.processors``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

BACKENDS = ("decord", "pyav")


class VideoDecodeError(RuntimeError):
    """A video that is missing or cannot be decoded; the message names the file."""


def sample_indices(
    num_total: int,
    num_frames: int,
    sampling: str = "uniform",
    fps: Optional[float] = None,
    boundary: Optional[float] = None,
    window: float = 2.0,
) -> List[int]:
    """Frame indices (length ``num_frames``) into a clip of ``num_total`` frames."""
    if num_total < 1:
        raise ValueError("video has no frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling == "uniform":
        lo, n = 0, num_total
    elif sampling == "boundary":
        if boundary is None or fps is None or fps <= 0:
            raise ValueError("boundary sampling needs the boundary time and the video fps")
        lo = int(np.clip(round((boundary - window) * fps), 0, num_total - 1))
        hi = int(np.clip(round((boundary + window) * fps), lo + 1, num_total))
        n = hi - lo
    else:
        raise ValueError(f"unknown sampling {sampling!r}; expected 'uniform' or 'boundary'")
    return [lo + (i * n) // num_frames for i in range(num_frames)]


def _read_decord(path: str, num_frames: int, sampling: str, boundary, window) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    idx = sample_indices(len(vr), num_frames, sampling, vr.get_avg_fps(), boundary, window)
    out = vr.get_batch(idx)
    return out.asnumpy() if hasattr(out, "asnumpy") else out.numpy()


def _read_pyav(path: str, num_frames: int, sampling: str, boundary, window) -> np.ndarray:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]  # decode all: exact count
        fps = float(stream.average_rate) if stream.average_rate else None
    if not frames:
        raise ValueError("no frames decoded")
    idx = sample_indices(len(frames), num_frames, sampling, fps, boundary, window)
    return np.stack([frames[i] for i in idx])


def read_frames(
    path: str | os.PathLike,
    num_frames: int,
    sampling: str = "uniform",
    boundary: Optional[float] = None,
    window: float = 2.0,
    backend: Optional[str] = None,
) -> np.ndarray:
    """Decode ``num_frames`` frames -> uint8 (T, H, W, 3). ``backend``: None (decord, then PyAV), or one."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    order = [backend] if backend else list(BACKENDS)
    errors = []
    for b in order:
        fn = _read_decord if b == "decord" else _read_pyav
        try:
            frames = fn(str(path), num_frames, sampling, boundary, window)
        except ImportError as e:
            errors.append(f"{b}: not installed ({e})")
            continue
        except (ValueError,) as e:
            if "sampling" in str(e) or "num_frames" in str(e):
                raise
            errors.append(f"{b}: {type(e).__name__}: {e}")
            continue
        except Exception as e:  # decord raises its own DECORDError, PyAV av.error.*
            errors.append(f"{b}: {type(e).__name__}: {e}")
            continue
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            errors.append(f"{b}: unexpected frame array shape {frames.shape}")
            continue
        return frames  # (T, H, W, 3)
    raise VideoDecodeError(f"cannot decode video {path}: " + "; ".join(e.splitlines()[0][:300] for e in errors))


__all__ = ["read_frames", "sample_indices", "VideoDecodeError", "BACKENDS"]
