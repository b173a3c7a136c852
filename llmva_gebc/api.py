"""The Python API: load a trained captioner once, caption boundaries of any video.

    import llmva_gebc
    model = llmva_gebc.load("train_configs/tiny.yaml", ckpt="output/tiny/checkpoint_best")
    model.caption("clip.mp4", [2.4, 6.1], labels=["Change of Action", "Change of Color"])
    # -> [{"boundary_id": "clip_0", "boundary": 2.4, "label": "Change of Action",
    #      "prev_timestamp": 0.0, "next_timestamp": 6.1, "duration": 10.0,
    #      "subject": "...", "status_before": "...", "status_after": "..."}, ...]

``python -m llmva_gebc.caption`` is a thin CLI over this module.

What a caption is computed from, and why it equals the evaluator's caption of the same boundary:

* **features**: T image Q-Former tokens per video (T = ``datasets.<name>.vis_processor.num_frames``,
  uniform over the whole clip). If the extraction cache (``features_dir``, by default the config's
  ``datasets.<name>.features_dir``) holds ``<video_id>.npy`` (video id = file stem), it is used as
  is, exactly as the evaluation dataset reads it. Otherwise the video is decoded with
  :func:`~llmva_gebc.data.video.read_frames` + the config's processor and encoded with
  :func:`~llmva_gebc.models.encoder.build_encoder` — the same steps as ``python -m llmva_gebc.extract``.
* **prompt**: :func:`~llmva_gebc.data.gebc.build_prompt` (label, caption type).
* **reference points**: :func:`~llmva_gebc.data.gebc.reference_points` from (timestamp,
  prev_timestamp, next_timestamp, duration). Annotation entries carry prev/next; for bare timestamps
  prev/next are the neighbouring boundaries (sorted by time), with 0 before the first and the clip's
  duration after the last, which is how the GEBC annotation defines them.
* **duration**: given explicitly, else the dataset's ``video_info`` when it lists the video id (what
  the evaluator uses), else measured on the file: the decoded frames' timestamps (not the header,
  which browser recordings leave empty and truncated files overstate).
* **generation**: ``model.generate`` with the config's ``model.generation`` settings (batch-invariant,
  so batching does not change a caption).
"""
from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from llmva_gebc.data import is_number
from llmva_gebc.data.gebc import (
    LABELS, TYPES, DataError, boundary_time_problem, build_prompt, check_q_tokens, load_annotations,
    load_feature_array, read_json, reference_points, resample_nearest, resolve_path,
)
from llmva_gebc.data.video import VideoDecodeError, probe_video, read_frames
from llmva_gebc.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_LABEL = "Change of Action"  # the most frequent GEBC label
BoundarySpec = Union[float, int, Mapping[str, Any]]


class CaptionError(UserError):
    """A request that cannot be captioned (bad timestamp, label, missing input); the message says why."""


# ------------------------------------------------------------------------------------------ helpers
def canonical_label(label: str) -> str:
    """One of the five GEBC labels, matched case-insensitively; anything else is an error."""
    for known in LABELS:
        if str(label).strip().lower() == known.lower():
            return known
    raise CaptionError(f"unknown boundary label {label!r}; the model was trained on: {', '.join(LABELS)}")


def probe_duration(path: str | os.PathLike) -> float:
    """Duration of a video file in seconds, from its decoded frames' timestamps
    (:func:`~llmva_gebc.data.video.probe_video`): right also for files whose header states none
    (browser/webcam WebM and MKV) and for truncated files (the part that decodes)."""
    return probe_video(path).duration


def resolve_boundaries(boundaries: Sequence[BoundarySpec], duration: float, labels: Optional[Sequence[str]] = None,
                       video_id: str = "video", where: str = "") -> List[Dict[str, Any]]:
    """Boundary specs → dicts with ``boundary_id, timestamp, prev_timestamp, next_timestamp, label``.

    A spec is a timestamp (seconds) or an annotation-like mapping (``timestamp`` and optionally
    ``prev_timestamp``, ``next_timestamp``, ``label``, ``boundary_id``). Missing prev/next come from
    the neighbouring timestamps (0 and ``duration`` at the ends). ``labels``: one per boundary, or one
    for all; default: the mapping's label, else ``DEFAULT_LABEL``. Every boundary must pass
    :func:`~llmva_gebc.data.gebc.boundary_time_problem` (0 < t < duration, 0 <= prev <= t <= next <=
    duration), the rule the dataset applies to annotation files; ``where`` names the video in errors.
    """
    if isinstance(boundaries, (str, bytes, numbers.Number)) or not boundaries:
        raise CaptionError(f"boundaries must be a non-empty list of timestamps (seconds) or annotation entries, "
                           f"got {boundaries!r}")
    if not (is_number(duration) and math.isfinite(duration) and duration > 0):
        raise CaptionError(f"the clip duration must be a positive number of seconds, got {duration!r}")
    specs = [dict(b) if isinstance(b, Mapping) else {"timestamp": b} for b in boundaries]
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        if len(labels) not in (1, len(specs)):
            raise CaptionError(f"got {len(labels)} labels for {len(specs)} boundaries; give one label per boundary "
                               "or a single label for all")
        if len(labels) == 1:
            labels = labels * len(specs)
    times = []
    for i, s in enumerate(specs):
        t = s.get("timestamp")
        if not is_number(t):  # not a bool (True would be 1 s), not a string
            raise CaptionError(f"boundary {i}: timestamp must be a number of seconds, got {type(t).__name__} {t!r}")
        t = float(t)
        if not math.isfinite(t):
            raise CaptionError(f"boundary {i}: timestamp must be a finite number of seconds, got {t!r}")
        problem = boundary_time_problem(t, 0.0, duration, duration)  # inside the clip, before neighbours matter
        if problem:
            raise CaptionError(f"boundary '{s.get('boundary_id', f'{video_id}_{i}')}' at {t:g} s{where}: {problem}")
        times.append(t)
    if len(set(times)) != len(times):
        raise CaptionError(f"duplicate boundary timestamps in {times}")
    ordered = sorted(times)
    out = []
    for i, (s, t) in enumerate(zip(specs, times)):
        k = ordered.index(t)
        bid = s.get("boundary_id", f"{video_id}_{i}")
        prev = s.get("prev_timestamp", ordered[k - 1] if k > 0 else 0.0)
        nxt = s.get("next_timestamp", ordered[k + 1] if k + 1 < len(ordered) else duration)
        if not (is_number(prev) and is_number(nxt)):
            raise CaptionError(f"boundary '{bid}': prev/next timestamps must be numbers of seconds, got "
                               f"prev_timestamp={prev!r}, next_timestamp={nxt!r}")
        prev, nxt = float(prev), float(nxt)
        problem = boundary_time_problem(t, prev, nxt, duration)  # the dataset's rule
        if problem:
            raise CaptionError(f"boundary '{bid}' at {t:g} s{where}: {problem}")
        # a label the caller chose must be one of the five; an annotation entry's label is used as is
        if not isinstance(bid, str) or not bid:
            raise CaptionError(f"boundary {i}: boundary_id must be a non-empty string, got {bid!r}")
        if any(o["boundary_id"] == bid for o in out):  # two rows of one id: a submission would keep one
            raise CaptionError(f"duplicate boundary_id '{bid}'")
        label = canonical_label(labels[i]) if labels is not None else s.get("label") or DEFAULT_LABEL
        if not isinstance(label, str):
            raise CaptionError(f"boundary '{bid}': label must be a string, got {type(label).__name__} {label!r}")
        if label not in LABELS:  # as the dataset does for an annotation file's labels
            log.warning("boundary '%s' has an unusual label %r (not one of the five GEBC labels)", bid, label)
        out.append({"boundary_id": bid, "timestamp": t, "prev_timestamp": prev, "next_timestamp": nxt,
                    "label": str(label)})
    return out


def _device_of(name: Optional[str], cfg) -> torch.device:
    return parse_device(name or cfg.run.device)


def parse_device(want: Any) -> torch.device:
    """``--device`` / ``run.device`` (auto, cpu, cuda, cuda:N) as a torch device; ``CaptionError`` (a user
    error) for anything else, or for CUDA on a machine without it. Shared by every command line."""
    want = str(want)
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(want)
    except RuntimeError:
        raise CaptionError(f"device {want!r} (--device or run.device) is not a device; expected cpu, cuda or "
                           "cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise CaptionError(f"device {want!r} (--device or run.device): expected cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CaptionError(f"device {want!r} (--device or run.device): CUDA is not available here; use cpu")
    return dev


# ------------------------------------------------------------------------------------------ captioner
class Captioner:
    """A loaded model plus everything needed to turn a video into its inputs. Build with :func:`load`."""

    def __init__(self, cfg, model, *, dataset: Optional[str] = None, features_dir: Optional[str] = None,
                 video_info: Optional[str] = None, batch_size: Optional[int] = None,
                 generate_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        from llmva_gebc.config import pick_dataset

        self.cfg = cfg
        self.model = model.eval()
        self.dataset_name, ds = pick_dataset(cfg, dataset)
        root = ds.root if ds is not None else None
        self.processor_cfg = ds.vis_processor if ds is not None else None
        self.num_frames = int(self.processor_cfg.num_frames) if self.processor_cfg is not None else 12
        fdir = features_dir if features_dir is not None else (ds.features_dir if ds is not None else None)
        self.features_dir = resolve_path(root, fdir)
        vinfo = video_info if video_info is not None else (ds.video_info if ds is not None else None)
        self.video_info_path = resolve_path(root, vinfo)
        self._video_info: Optional[Dict[str, float]] = None
        self.other_feats = [{"name": o.name, "dir": resolve_path(root, o.dir), "dim": int(o.dim)}
                            for o in (ds.other_feats if ds is not None else [])]
        self.max_seq_len = int(ds.max_seq_len) if ds is not None else 96
        self.batch_size = int(batch_size if batch_size is not None else cfg.run.batch_size_eval)
        if self.batch_size < 1:
            raise CaptionError(f"batch_size (--batch-size) must be >= 1, got {batch_size!r}")
        self.generate_kwargs = dict(generate_kwargs or {})
        self._encoder = getattr(model, "encoder", None)
        self._processor = None

    # -------------------------------------------------------------- inputs
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def encoder(self):
        """The frozen image encoder, built on first use (cached features never need it)."""
        if self._encoder is None:
            from llmva_gebc.models.encoder import build_encoder

            self._encoder = build_encoder(self.cfg.model.encoder, device=self.device)
        return self._encoder

    @property
    def processor(self):
        if self._processor is None:
            from llmva_gebc.data.processors import build_processor

            self._processor = build_processor(self.processor_cfg, training=False)
        return self._processor

    def cached_features_path(self, video_id: str) -> Optional[Path]:
        if self.features_dir is None:
            return None
        p = self.features_dir / f"{video_id}.npy"
        return p if p.is_file() else None

    def video_info(self) -> Dict[str, float]:
        if self._video_info is None:
            p = self.video_info_path
            info = read_json(p, "video_info") if p is not None and p.is_file() else {}
            if not isinstance(info, dict):
                raise CaptionError(f"{p}: expected a JSON object {{youtube_id: duration}}, got {type(info).__name__}")
            self._video_info = info
        return self._video_info

    def duration_of(self, video_path: str | os.PathLike) -> Tuple[float, str]:
        """(duration in seconds, where it came from): the dataset's video_info, else the decoded file."""
        vid = Path(video_path).stem
        info = self.video_info()
        if vid in info and info[vid] is not None:
            if not is_number(info[vid]):  # a string or a bool (True would be a 1-second clip)
                raise CaptionError(f"{self.video_info_path}: key '{vid}' (the video's duration) must be a number of "
                                   f"seconds, got {type(info[vid]).__name__} {info[vid]!r}")
            return float(info[vid]), f"video_info {self.video_info_path}"
        probe = probe_video(video_path)
        if probe.shortfall():  # say so in a boundary error: the frames past the cut do not exist
            return probe.duration, (f"decoded frames: only {probe.frames} frames, {probe.duration:.2f} s, decode; "
                                    f"its header declares {probe.declared()}")
        return probe.duration, "decoded frames"

    def encode_video(self, video_path: str | os.PathLike) -> torch.Tensor:
        """Decode T frames uniformly, process and encode them: float32 (T, Q, H) on the CPU.

        The same steps as ``python -m llmva_gebc.extract``; the result equals its ``.npy``.
        """
        frames = self.processor(read_frames(video_path, self.num_frames))  # (T, 3, S, S)
        enc = self.encoder
        with torch.no_grad():
            return enc(frames.to(device=enc.device, dtype=enc.dtype)).float().cpu()  # (T, Q, H)

    def features(self, video_path: str | os.PathLike, use_cache: bool = True) -> Tuple[torch.Tensor, str]:
        """(q_tokens float32 (T, Q, H), source): the extraction cache's ``<stem>.npy`` if present, else decoded."""
        vid = Path(video_path).stem
        cached = self.cached_features_path(vid) if use_cache else None
        if cached is not None:
            arr = load_feature_array(cached)
            m = self.cfg.model
            check_q_tokens(arr, cached, queries=int(m.encoder.num_query_tokens), hidden=int(m.adapter.hidden_size),
                           max_frames=int(m.adapter.max_frame_pos))  # as the evaluation dataset checks it
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), f"cache {cached}"
        return self.encode_video(video_path), "decoded video"

    def other_features(self, video_id: str) -> Optional[torch.Tensor]:
        """(S, sum_d) other features of a video from the dataset's ``other_feats`` dirs, or None if unused."""
        if not self.other_feats:
            return None
        parts = []
        for of in self.other_feats:
            path = next((of["dir"] / f"{video_id}{e}" for e in (".npy", ".pkl") if (of["dir"] / f"{video_id}{e}").is_file()),
                        None)
            if path is None:
                raise CaptionError(
                    f"this model needs other features '{of['name']}' (dim {of['dim']}) but {of['dir']} has no "
                    f"{video_id}.npy/.pkl: extract them with the encoder and settings the model was trained on, "
                    f"e.g. python -m llmva_gebc.other_feats extract --encoder efficientnet_lite0 --videos "
                    f"<folder of the video> --out {of['dir']} --fps 4 --image-size 96 --grid 2 (the demo's), or "
                    f"point the dataset's other_feats dir for '{of['name']}' at a folder that has them (--options)")
            arr = load_feature_array(path)
            if arr.ndim != 2 or arr.shape[1] != of["dim"]:
                raise DataError(f"other features file {path}: expected (t, {of['dim']}), got {tuple(arr.shape)}")
            parts.append(resample_nearest(arr, self.max_seq_len).astype(np.float32))  # (S, d)
        return torch.from_numpy(np.concatenate(parts, axis=1))  # (S, sum_d)

    # -------------------------------------------------------------- automatic boundaries
    @property
    def boundary_detector(self):
        """:class:`llmva_gebc.boundaries.BoundaryDetector` with this config's ``model.boundary_detector``,
        sharing this captioner's frozen encoder."""
        if getattr(self, "_detector", None) is None:
            from llmva_gebc.boundaries import BoundaryDetector

            det = BoundaryDetector(self.cfg, self.dataset_name, device=self.device)
            if det.settings["features"] == "qformer":
                det._encoder = self.encoder
            self._detector = det
        return self._detector

    def detect_boundaries(self, video_path: str | os.PathLike, duration: Optional[float] = None) -> Dict[str, Any]:
        """Event boundaries of a video file, found without annotations (``llmva_gebc.boundaries``).

        Returns ``{"video_id", "duration", "duration_source", "features", "boundaries": [{"timestamp" (s),
        "score" (in [0, 1], relative to the clip's strongest change)}, ...]}``, in time order, at least one."""
        video_path = Path(video_path)
        src = "given"
        if duration is None:
            duration, src = self.duration_of(video_path)
        elif not (is_number(duration) and math.isfinite(duration) and duration > 0):
            raise CaptionError(f"the clip duration (--duration) must be a positive number of seconds, got {duration!r}")
        det = self.boundary_detector
        res = det(video_path, float(duration))
        return {"video_id": video_path.stem, "duration": float(duration), "duration_source": src,
                "features": det.settings["features"],
                "boundaries": [{"timestamp": t, "score": sc} for t, sc in zip(res["timestamps"], res["scores"])]}

    def caption_auto(self, video_path: str | os.PathLike, label: Optional[str] = None,
                     duration: Optional[float] = None, use_cache: bool = True) -> List[Dict[str, Any]]:
        """Detect the boundaries of a video, then caption each (rows as :meth:`caption`, plus ``score``,
        ``boundary_source`` = "auto" and ``label_source``: "user" for ``label``, else
        "default (model.boundary_detector.label)": a change score cannot tell the GEBC label)."""
        det = self.detect_boundaries(video_path, duration)
        if label is not None:
            label, label_src = canonical_label(label), "user"
        else:
            label = canonical_label(self.boundary_detector.settings["label"])
            label_src = "default (model.boundary_detector.label)"
        times = [b["timestamp"] for b in det["boundaries"]]
        rows = self.caption(video_path, times, labels=[label], duration=det["duration"], use_cache=use_cache,
                            _duration_source=det["duration_source"])
        for r, b in zip(rows, det["boundaries"]):
            r.update(score=b["score"], boundary_source="auto", label_source=label_src)
        return rows

    # -------------------------------------------------------------- captioning
    def caption_features(self, q_tokens: torch.Tensor, boundaries: Sequence[BoundarySpec], duration: float,
                         labels: Optional[Sequence[str]] = None, video_id: str = "video",
                         other_feats: Optional[torch.Tensor] = None) -> List[Dict[str, Any]]:
        """Caption boundaries from pre-computed features ``q_tokens`` (T, Q, H) of a clip of ``duration`` s.

        Returns one dict per boundary (input order): ``boundary_id, boundary (timestamp), label,
        prev_timestamp, next_timestamp, duration, subject, status_before, status_after``.
        """
        from llmva_gebc.data.collate import collate_gebc

        q_tokens = torch.as_tensor(q_tokens)
        m = self.cfg.model
        Q, H, T_max = int(m.encoder.num_query_tokens), int(m.adapter.hidden_size), int(m.adapter.max_frame_pos)
        if q_tokens.ndim != 3 or tuple(q_tokens.shape[1:]) != (Q, H) or not 1 <= q_tokens.shape[0] <= T_max:
            raise CaptionError(f"q_tokens must be (T, {Q}, {H}) with 1 <= T <= {T_max} (model.adapter.max_frame_pos), "
                               f"got shape {tuple(q_tokens.shape)}")
        if not q_tokens.is_floating_point():
            raise CaptionError(f"q_tokens must be floating point, got {q_tokens.dtype}")
        if not bool(torch.isfinite(q_tokens).all()):
            raise CaptionError(f"q_tokens hold {int((~torch.isfinite(q_tokens)).sum())} non-finite values (NaN/inf)")
        q_tokens = q_tokens.to(torch.float32)  # (T, Q, H)
        if self.other_feats and other_feats is None:
            other_feats = self.other_features(video_id)
        elif other_feats is not None:
            other_feats = torch.as_tensor(other_feats)
            want = (self.max_seq_len, sum(of["dim"] for of in self.other_feats))
            if not self.other_feats or tuple(other_feats.shape) != want or not other_feats.is_floating_point():
                raise CaptionError(f"other_feats must be floating point of shape {want} (datasets.<name>.max_seq_len, "
                                   f"the sum of the other_feats dims), got {other_feats.dtype} {tuple(other_feats.shape)}"
                                   if self.other_feats else "other_feats given, but this model has no other-feature branch")
            other_feats = other_feats.float()  # (S, sum_d)
        recs = resolve_boundaries(boundaries, duration, labels, video_id=video_id)
        samples = []
        for r in recs:
            for ctype in TYPES:
                s = {"boundary_id": r["boundary_id"], "video_id": video_id, "type": ctype, "label": r["label"],
                     "prompt": build_prompt(r["label"], ctype), "caption": None,
                     "ref_points": reference_points(r["timestamp"], r["prev_timestamp"], r["next_timestamp"],
                                                    duration),  # (2,) float64
                     "timestamp": r["timestamp"], "duration": float(duration), "q_tokens": q_tokens}  # (T, Q, H)
                if other_feats is not None:
                    s["other_feats"] = other_feats  # (S, sum_d)
                samples.append(s)
        captions: List[str] = []
        with torch.no_grad():
            for i in range(0, len(samples), self.batch_size):
                batch = collate_gebc(samples[i:i + self.batch_size])
                captions += self.model.generate(batch, **self.generate_kwargs)
        out = []
        for j, r in enumerate(recs):
            d = {"boundary_id": r["boundary_id"], "boundary": r["timestamp"], "label": r["label"],
                 "prev_timestamp": r["prev_timestamp"], "next_timestamp": r["next_timestamp"],
                 "duration": float(duration)}
            d.update({t: captions[3 * j + k] for k, t in enumerate(TYPES)})
            out.append(d)
        return out

    def caption(self, video_path: str | os.PathLike, boundaries: Sequence[BoundarySpec],
                labels: Optional[Sequence[str]] = None, duration: Optional[float] = None,
                use_cache: bool = True, _duration_source: str = "given") -> List[Dict[str, Any]]:
        """Caption ``boundaries`` (seconds, or annotation entries) of a video file.

        ``labels``: one per boundary or one for all (default: an entry's own label, else
        "Change of Action"). A video missing on disk is accepted only when the extraction cache holds
        its features and its duration is known (``duration`` or the dataset's video_info).
        """
        video_path = Path(video_path)
        vid = video_path.stem
        if not video_path.is_file():
            info = self.video_info()
            if use_cache and self.cached_features_path(vid) is not None and (duration is not None or vid in info):
                log.info("video %s not on disk: using cached features %s", video_path, self.cached_features_path(vid))
            else:
                raise VideoDecodeError(f"video file not found: {video_path}"
                                       + (f" (and no cached features {self.features_dir / (vid + '.npy')})"
                                          if self.features_dir is not None else ""))
        src = _duration_source  # how the caller got ``duration`` (caption_auto: the detector's source)
        if duration is None:
            duration, src = self.duration_of(video_path)
        # check the timestamps before the (possibly slow) decoding and encoding
        resolve_boundaries(boundaries, duration, labels, video_id=vid, where=f" of {video_path} (duration from {src})")
        q, feat_src = self.features(video_path, use_cache=use_cache)
        log.info("%s: duration %.3f s (%s), features from %s", video_path, duration, src, feat_src)
        return self.caption_features(q, boundaries, duration, labels, video_id=vid)

    def caption_annotations(self, video_path: str | os.PathLike, annotations: str | os.PathLike,
                            duration: Optional[float] = None, use_cache: bool = True) -> List[Dict[str, Any]]:
        """Caption every boundary of ``video_path``'s id (file stem) in a GEBC annotation file, with the
        annotation's own timestamps, prev/next timestamps and labels."""
        vid = Path(video_path).stem
        recs = [r for r in load_annotations(annotations, with_captions=False) if r["video_id"] == vid]
        if not recs:
            raise CaptionError(f"annotation file {annotations} has no boundaries for video id '{vid}' "
                               "(the file name without extension)")
        specs = [{k: r[k] for k in ("boundary_id", "timestamp", "prev_timestamp", "next_timestamp", "label")}
                 for r in recs]
        return self.caption(video_path, specs, duration=duration, use_cache=use_cache)


# ------------------------------------------------------------------------------------------ loading
def load(cfg_path, ckpt: Optional[str | os.PathLike] = None, options: Optional[Sequence[str]] = None,
         device: Optional[str | torch.device] = None, **captioner_kwargs: Any) -> Captioner:
    """Load a captioner: config (a YAML path or a loaded config) + ``--options`` overrides, the model
    (``model.checkpoint`` if set), then the trained weights ``ckpt`` (a run's checkpoint dir or a
    ``.safetensors``/``.pth``) as ``evaluate.py --ckpt`` does.

    ``captioner_kwargs``: ``dataset``, ``features_dir``, ``video_info``, ``batch_size``,
    ``generate_kwargs`` (see :class:`Captioner`).
    """
    from llmva_gebc.config import check_resolved, load_config
    from llmva_gebc.models import build_model

    cfg = load_config(cfg_path, options) if isinstance(cfg_path, (str, os.PathLike)) else cfg_path
    check_resolved(cfg, ["model.llm.path"])
    dev = _device_of(device, cfg)
    torch.manual_seed(int(cfg.run.seed))  # as run_evaluation: random parts are identical
    model = build_model(cfg.model, device=dev)
    if ckpt:
        from llmva_gebc.models.checkpoint import load_trained

        load_trained(model, ckpt, cfg)
        log.info("loaded trainable weights from %s", ckpt)
    elif not cfg.model.checkpoint:
        log.warning("no trained weights (no ckpt and no model.checkpoint): the adapter is randomly initialised "
                    "and the captions are meaningless")
    return Captioner(cfg, model, **captioner_kwargs)


__all__ = ["load", "Captioner", "CaptionError", "parse_device", "resolve_boundaries", "probe_duration", "canonical_label",
           "DEFAULT_LABEL"]
