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

Trust what decodes, not what the header says: the frame count n is that of the decoded frames
(PyAV decodes the whole stream; decord reads every packet when it opens a file, and refuses a
truncated MP4). A file that decodes to clearly fewer frames than its header declares (a truncated
upload) raises ``TruncatedVideoError`` with both counts instead of sampling the T frames from the
part that survived. ``probe_video`` gives the decoded frame count and duration (from the decoded
timestamps), also for WebM/MKV recordings whose header states neither. Metadata that is not valid
UTF-8 is ignored.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from llmva_gebc.errors import UserError

logger = logging.getLogger(__name__)
BACKENDS = ("decord", "pyav")


class VideoDecodeError(RuntimeError, UserError):
    """A video that is missing or cannot be decoded; the message names the file."""


class TruncatedVideoError(VideoDecodeError):
    """A video whose data stops well before what its header declares; the message gives both counts."""


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


TRUNCATION_TOLERANCE = 0.05  # a file may decode this fraction less than it declares (at least 2 frames' worth)


@dataclass(frozen=True)
class DecodedVideo:
    """What the video stream of a file decodes to, next to what its header declares.

    ``frames``: frames that decode; ``duration``: seconds from the decoded timestamps (first frame's
    start to last frame's end); ``declared_frames``/``declared_duration``: the header's frame count and
    video-stream duration (the file's, for a file with one stream), None where it states none
    (WebM/MKV from browser and webcam recorders).
    """

    path: str
    frames: int
    duration: float
    fps: Optional[float]
    declared_frames: Optional[int]
    declared_duration: Optional[float]
    error: Optional[str] = None  # the decoder error that ended decoding early, if any

    def shortfall(self) -> Optional[str]:
        """A message when clearly fewer frames decode than the header declares (a truncated file), else None.

        "Clearly": more than ``max(2 / fps, TRUNCATION_TOLERANCE * declared)`` seconds short of the
        stream's declared duration, or (no duration declared) more than ``max(2, TRUNCATION_TOLERANCE *
        declared)`` frames short of its frame count. The duration comes first because an MP4 cut by
        stream copy lists frames in its sample table that its edit list hides from playback (and from
        decoding): its frame count overstates, its duration does not.
        """
        short = False
        if self.declared_duration:
            slack = max(2 / self.fps if self.fps else 0.1, TRUNCATION_TOLERANCE * self.declared_duration)
            short = self.declared_duration - self.duration > slack
        elif self.declared_frames:
            short = self.declared_frames - self.frames > max(2, TRUNCATION_TOLERANCE * self.declared_frames)
        if not short:
            return None
        return (f"video {self.path} is truncated or corrupt: {self.frames} frames ({self.duration:.2f} s) decode but "
                f"its header declares {self.declared()}" + (f" (decoder: {self.error})" if self.error else ""))

    def overrun(self) -> Optional[str]:
        """A message when the decoded timestamps span clearly MORE than the header's duration (more than
        ``max(0.5 s, TRUNCATION_TOLERANCE * declared)`` over), else None: a broken time base (e.g. a zero
        timescale) makes durations, frame times and so every boundary's reference point wrong."""
        if not self.declared_duration or self.duration - self.declared_duration <= max(
                0.5, TRUNCATION_TOLERANCE * self.declared_duration):
            return None
        return (f"video {self.path} has broken timestamps: its {self.frames} decoded frames span {self.duration:.2f} s "
                f"but its header declares {self.declared()} (a zero or wrong time base?); re-encode it "
                "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")

    def declared(self) -> str:
        """The header's claims in words, e.g. ``"48 frames, 4.00 s"``."""
        parts = [f"{self.declared_frames} frames" if self.declared_frames else "",
                 f"{self.declared_duration:.2f} s" if self.declared_duration else ""]
        return ", ".join(x for x in parts if x) or "nothing"


def _declared(container) -> Tuple[Optional[int], Optional[float]]:
    """(frame count, duration in s) that an open PyAV container's header declares for its video stream."""
    stream = container.streams.video[0]
    frames = int(stream.frames) or None
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base is not None else None
    if duration is None and container.duration and len(container.streams) == 1:
        # MKV/WebM state a duration for the file only; with no other stream (audio) it is the video's
        duration = container.duration / 1_000_000
    return frames, duration


def _decode_pyav(path: str, keep: bool) -> Tuple[List[np.ndarray], DecodedVideo]:
    """Decode every frame PyAV can; RGB arrays only when ``keep``. Stops at the first demuxer/decoder error.

    Metadata that is not valid UTF-8 (some real AVI files) is ignored rather than refused.
    """
    import av

    frames: List[np.ndarray] = []
    times: List[float] = []
    n, last_len, error = 0, None, None
    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate) if stream.average_rate else None
        try:
            for frame in container.decode(stream):
                n += 1
                if keep:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if frame.time is not None:
                    times.append(float(frame.time))
                    if frame.duration and frame.time_base is not None:
                        last_len = float(frame.duration * frame.time_base)
        except av.FFmpegError as e:  # truncated/corrupt data: what decoded so far is the clip
            error = f"{type(e).__name__}: {e}"
        declared_frames, declared_duration = _declared(container)
    step = last_len or (1.0 / fps if fps else 0.0)
    if times:
        duration = max(times) - min(times) + step
    else:
        duration = n / fps if fps else 0.0
    info = DecodedVideo(path, n, duration, fps, declared_frames, declared_duration, error)
    if error and n and not info.shortfall():
        logger.warning("video %s: decoding stopped at an error after %d frames (%s); using the frames that decode",
                       path, n, error)
    return frames, info


def probe_video(path: str | os.PathLike) -> DecodedVideo:
    """Decode the whole video stream with PyAV (no colour conversion): decoded frames and duration.

    Raises ``VideoDecodeError`` naming the file when it is missing or nothing decodes. A truncated
    file is returned as is (see :meth:`DecodedVideo.shortfall`).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}")
    try:
        _, info = _decode_pyav(str(path), keep=False)
    except Exception as e:  # av.error.* on open
        raise VideoDecodeError(f"cannot decode video {path}: pyav: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
                               ) from None
    if info.frames == 0:
        raise VideoDecodeError(f"cannot decode video {path}: no frame decodes"
                               + (f" ({info.error})" if info.error else ""))
    if info.overrun():  # a duration from broken timestamps would be used silently
        raise VideoDecodeError(info.overrun())
    return info


def _read_decord(path: str, num_frames: int, sampling: str, boundary, window) -> np.ndarray:
    import decord

    # decord reads every packet on open (to index the key frames): its count is what the file holds
    # (a truncated MP4 fails here and goes to PyAV); compare it with what the header declares
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    n, fps = len(vr), vr.get_avg_fps()
    if n:
        import av

        with av.open(path, metadata_errors="ignore") as container:
            declared = _declared(container) if container.streams.video else (None, None)
        start, end = vr.get_frame_timestamp(0)[0], vr.get_frame_timestamp(n - 1)[1]
        info = DecodedVideo(path, n, float(end - start), fps or None, *declared)
        short = info.shortfall()
        if short:
            raise TruncatedVideoError(short)
        if info.overrun():
            raise TruncatedVideoError(info.overrun())  # both backends read the same header: final
    idx = sample_indices(n, num_frames, sampling, fps, boundary, window)
    out = vr.get_batch(idx)
    return out.asnumpy() if hasattr(out, "asnumpy") else out.numpy()


def _read_pyav(path: str, num_frames: int, sampling: str, boundary, window) -> np.ndarray:
    frames, info = _decode_pyav(path, keep=True)  # decode all: the exact count of what decodes
    if not frames:
        raise ValueError("no frames decoded" + (f" ({info.error})" if info.error else ""))
    short = info.shortfall() or info.overrun()
    if short:
        raise TruncatedVideoError(short)
    idx = sample_indices(len(frames), num_frames, sampling, info.fps, boundary, window)
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
        except TruncatedVideoError:
            raise  # both backends read the same file: the counts say it all
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


__all__ = ["read_frames", "probe_video", "sample_indices", "DecodedVideo", "VideoDecodeError", "TruncatedVideoError",
           "BACKENDS", "TRUNCATION_TOLERANCE"]
