"""The Kinetics-GEBC dataset: one sample per (boundary, caption type).

Files (layout of the real release and of ``llmva_gebc.data.synthetic``):

* annotation JSON ``{youtube_id: [{boundary_id, timestamp, prev_timestamp, next_timestamp, label,
  subject, status_before, status_after, ...}, ...]}``; the ``test`` split carries no captions;
* ``video_info.json`` ``{youtube_id: duration_seconds}``;
* cached-feature path: ``<features_dir>/<youtube_id>.npy`` of shape (T, Q, H) (image Q-Former tokens,
  written by ``python -m llmva_gebc.extract``); raw-video path (``use_raw_video``):
  ``<videos_dir>/<youtube_id>.mp4`` decoded and processed on the fly;
* optional other features ``<dir>/<youtube_id>.npy|.pkl`` of shape (t, d), resampled to
  ``max_seq_len`` steps exactly as the reference does (``resample_nearest``).

The video id is the first 11 characters of the boundary id (YouTube ids may contain ``_`` or start
with ``-``). Reference points are ``[timestamp / duration, (next_timestamp - prev_timestamp) / duration]``
in float64, as in the original.

Boundaries whose input is missing (no duration in ``video_info``, e.g. val video ``oc2bib7RLLo``, or
no feature/video file) produce **no samples** in any split, because there is nothing to feed the model.
Every boundary of the annotation file, available or not, is listed in order in
``dataset.boundaries`` (dicts with ``boundary_id, video_id, label, timestamp, prev_timestamp,
next_timestamp, duration`` (None when unknown), ``available`` and ``references`` (``{type: caption}``,
None on test)); the evaluator writes a submission over ``boundaries`` so the unavailable ids are still
present (with empty captions). The number of unavailable boundaries is logged (a warning when
training, where they are skipped; an info line at evaluation). On the full real val file this gives
3 × 6,748 samples and 3 unavailable boundaries.

Checks (errors naming the file and the key): a boundary id whose first 11 characters are not the video
key it sits under; boundary times that break ``boundary_time_problem`` (one rule with the caption API);
features that are unreadable, non-finite, of the wrong shape or longer than the model's frame limit
(``load_feature_array``, ``check_q_tokens``). ``.pkl`` files are read by ``llmva_gebc.safe_pickle``.

Samples of one boundary are consecutive, in the order of ``TYPES``; ``dataset.sample_boundary_index[i]``
is the index into ``dataset.boundaries`` of sample ``i`` (for samplers that keep a boundary together).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from llmva_gebc.data import LABELS, TYPES, caption_problem, is_number  # noqa: F401  (re-exported)
from llmva_gebc.errors import UserError
from llmva_gebc.registry import DATASETS
from llmva_gebc.safe_pickle import load_pickle

logger = logging.getLogger(__name__)

_TYPE_PROMPTS = {
    "subject": "The subject is",
    "status_before": "Status before change is",
    "status_after": "Status after change is",
}
_BOUNDARY_KEYS = ("boundary_id", "timestamp", "prev_timestamp", "next_timestamp", "label")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


class DataError(UserError):
    """Bad input data (annotation, features); the message names the file and the key."""


def build_prompt(label: str, caption_type: str) -> str:
    """The reference prompt: label sentence immediately followed (no space) by the type's stem."""
    if caption_type not in _TYPE_PROMPTS:
        raise ValueError(f"unknown caption type {caption_type!r}; expected one of {TYPES}")
    return "This video describes the " + label.lower() + "." + _TYPE_PROMPTS[caption_type]


def video_id_of(boundary_id: str) -> str:
    return boundary_id[:11]


TIME_TOLERANCE = 0.1  # s: video_info durations are rounded (real test boundary: next 8.608 s, duration 8.6 s)


def boundary_time_problem(timestamp: float, prev_timestamp: float, next_timestamp: float,
                          duration: float) -> Optional[str]:
    """Why a boundary's times are impossible, or None. The one rule of the dataset, API and CLI.

    The boundary itself must lie inside the clip, ``0 < t < duration``, and its segment around it
    must satisfy ``0 <= prev <= t <= next <= duration``, the clip's ends with a tolerance of
    ``TIME_TOLERANCE`` s (rounded durations). Otherwise a reference point falls outside [0, 1].
    """
    t, p, n, d, tol = float(timestamp), float(prev_timestamp), float(next_timestamp), float(duration), TIME_TOLERANCE
    if not all(math.isfinite(x) for x in (t, p, n, d)):
        return f"times must be finite numbers (t={t:g}, prev={p:g}, next={n:g}, duration={d:g})"
    if not 0 < t < d:
        return f"t={t:g} s is outside the clip (duration {d:g} s): a boundary needs 0 < t < duration"
    if not (-tol <= p <= t <= n <= d + tol):
        return (f"prev={p:g} s, t={t:g} s, next={n:g} s, duration {d:g} s break 0 <= prev <= t <= next <= duration "
                f"(clip ends +-{tol:g} s)")
    return None


def reference_points(timestamp: float, prev_timestamp: float, next_timestamp: float, duration: float) -> torch.Tensor:
    """(2,) float64: [timestamp / duration, (next - prev) / duration], as the original computes it."""
    return torch.tensor(
        [float(timestamp) / duration, (float(next_timestamp) - float(prev_timestamp)) / duration], dtype=torch.float64
    )


def resample_nearest(feats: np.ndarray, size: int) -> np.ndarray:
    """Resample (t, d) to (size, d) like the reference ``resizeFeature(x, size, 'nearest')``.

    The reference uses ``scipy.interpolate.interp1d(arange(t), x, kind='nearest')`` at positions
    ``i * float(t - 1) / (size - 1)``: the nearest index, with exact halves rounded DOWN (scipy
    searches the midpoints ``k + 0.5`` with ``side='left'``). A length-1 feature is repeated.
    """
    t = len(feats)
    if t == 1:
        return np.stack([np.reshape(feats, [-1])] * size)
    if size == 1:
        return feats[:1].copy()
    pos = np.array([i * float(t - 1) / (size - 1) for i in range(size)])
    mid = np.arange(t, dtype=np.float64) / 2.0
    mid = mid[1:] + mid[:-1]  # (t-1,) = k + 0.5, computed as scipy does
    idx = np.searchsorted(mid, pos, side="left").clip(0, t - 1)
    return feats[idx]


# --------------------------------------------------------------------------------------- file reading
def read_json(path: str | os.PathLike, what: str = "annotation") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    from llmva_gebc.fileio import JSONFileError, read_json_file

    try:
        return read_json_file(path, what)
    except JSONFileError as e:
        raise DataError(str(e)) from None


def _number(value: Any, path: Path, bid: str, key: str, what: str = "boundary") -> float:
    """``value`` as a float: a JSON number (not a bool, not a string such as ``"2.5"``, which the release
    never has and which would hide a broken export), finite; else ``DataError`` naming the file and key."""
    where = f"boundary '{bid}' key '{key}'" if what == "boundary" else f"key '{bid}' (the video's duration)"
    if not is_number(value):
        raise DataError(f"{path}: {where} must be a number of seconds, got {type(value).__name__} {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise DataError(f"{path}: {where} is not finite: {value!r}")
    return x


def load_annotations(path: str | os.PathLike, with_captions: bool) -> List[Dict[str, Any]]:
    """Parse and check an annotation file into a flat, ordered list of boundary dicts."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{youtube_id: [boundaries]}}, got {type(data).__name__}")
    out: List[Dict[str, Any]] = []
    seen = set()
    if not any(isinstance(items, list) and items for items in data.values()):
        raise DataError(f"{path}: no boundaries ({len(data)} video keys, none with a boundary); expected "
                        "{youtube_id: [boundaries]}")
    for vid, items in data.items():
        if not isinstance(items, list):
            raise DataError(f"{path}: key '{vid}' must map to a list of boundaries, got {type(items).__name__}")
        for k, b in enumerate(items):
            if not isinstance(b, dict):
                raise DataError(f"{path}: key '{vid}' entry {k} must be an object, got {type(b).__name__}")
            bid = b.get("boundary_id", f"{vid}[{k}]")
            required = _BOUNDARY_KEYS + (TYPES if with_captions else ())
            for key in required:
                if key not in b:
                    raise DataError(f"{path}: boundary '{bid}' is missing key '{key}'")
            if not isinstance(bid, str) or len(bid) < 11:
                raise DataError(f"{path}: boundary under '{vid}' has a bad 'boundary_id' {bid!r}")
            if video_id_of(bid) != vid:
                raise DataError(f"{path}: boundary_id '{bid}' (video part '{video_id_of(bid)}') sits under video key "
                                f"'{vid}'; a boundary id is its video's 11-character id followed by '_<n>'")
            if bid in seen:
                raise DataError(f"{path}: duplicate boundary_id '{bid}'")
            seen.add(bid)
            if not isinstance(b["label"], str) or not b["label"].strip():  # the prompt names it
                raise DataError(f"{path}: boundary '{bid}' key 'label' must be a GEBC label such as 'Change of Action', "
                                f"got {b['label']!r}")
            if b["label"] not in LABELS:
                logger.warning("%s: boundary '%s' has an unusual label %r", path, bid, b["label"])
            refs = None
            if with_captions:
                refs = {}
                for t in TYPES:
                    problem = caption_problem(b[t])
                    if problem:
                        raise DataError(f"{path}: boundary '{bid}' key '{t}' {problem}")
                    refs[t] = b[t]
            out.append({
                "boundary_id": bid,
                "video_id": video_id_of(bid),
                "label": b["label"],
                "timestamp": _number(b["timestamp"], path, bid, "timestamp"),
                "prev_timestamp": _number(b["prev_timestamp"], path, bid, "prev_timestamp"),
                "next_timestamp": _number(b["next_timestamp"], path, bid, "next_timestamp"),
                "references": refs,
            })
    return out


def load_feature_array(path: Path) -> np.ndarray:
    """Read a numeric array from ``.npy`` or ``.pkl`` (a pickled ndarray or list of numbers).

    ``.npy`` is read without pickles; ``.pkl`` through :func:`llmva_gebc.safe_pickle.load_pickle`
    (``"array"``: numpy arrays only, nothing in the file runs). Every path (training, evaluation, the
    caption API, extraction's skip check) reads features here, so every one refuses the same files.

    Raises ``DataError`` naming the file: unreadable or truncated file, a refused pickle global, a
    non-numeric array, or non-finite values (NaN/inf), which would silently give empty captions.
    """
    try:
        if path.suffix == ".npy":
            obj = np.load(path, allow_pickle=False)
        else:
            obj = load_pickle(path, "array")
        arr = np.asarray(obj)
    except Exception as e:  # corrupt, truncated or refused file: name it
        raise DataError(f"cannot read features file {path}: {type(e).__name__}: {e}") from None
    if arr.dtype.kind != "f":  # integers or booleans are no features (labels, indices, a mask saved by mistake)
        raise DataError(f"features file {path} holds {type(obj).__name__} of dtype {arr.dtype}; expected a floating-point "
                        "array (float16/float32/float64)")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(f"features file {path} holds {int(bad.sum())} non-finite values (NaN/inf), the first at "
                            f"index {first}; re-extract it (python -m llmva_gebc.extract --overwrite)")
    return arr


def check_q_tokens(arr: np.ndarray, path: Path, frames: Optional[int] = None, queries: Optional[int] = None,
                   hidden: Optional[int] = None, max_frames: Optional[int] = None) -> None:
    """Raise ``DataError`` naming ``path`` unless ``arr`` is (T, Q, H) with the expected sizes.

    ``frames``: the exact T wanted (None: any); ``max_frames``: the model's limit on T
    (``model.adapter.max_frame_pos``, the size of its frame position table).
    """
    exp = (frames or "T", queries or "Q", hidden or "H")
    if arr.ndim == 3 and arr.shape[0] == 0:
        raise DataError(f"features file {path} (key 'q_tokens') has T=0 frames, shape {tuple(arr.shape)}; re-extract it")
    if not (arr.ndim == 3 and all(isinstance(e, str) or e == g for e, g in zip(exp, arr.shape))):
        raise DataError(
            f"features file {path} (key 'q_tokens'): expected shape ({', '.join(map(str, exp))}), got "
            f"{tuple(arr.shape)} (Q = model.encoder.num_query_tokens, H = its Q-Former's hidden size): the folder "
            "holds another encoder's features; point the dataset's features_dir elsewhere or re-extract them for "
            "this config (python -m llmva_gebc.extract --cfg-path CFG --overwrite ...)"
        )
    if max_frames is not None and arr.shape[0] > max_frames:
        raise DataError(f"features file {path} has T={arr.shape[0]} frames but the model takes at most "
                        f"{max_frames} (model.adapter.max_frame_pos); extract with num_frames <= {max_frames}")


def find_video(videos_dir: Path, video_id: str) -> Optional[Path]:
    for ext in VIDEO_EXTS:
        p = videos_dir / (video_id + ext)
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------------------- dataset
class GEBCDataset(Dataset):
    """Map-style GEBC dataset; see the module docstring. Classes see plain arguments, not configs."""

    def __init__(
        self,
        annotation_path: str | os.PathLike,
        video_info_path: str | os.PathLike,
        *,
        split: str,
        training: bool,
        features_dir: Optional[str | os.PathLike] = None,
        other_feats: Sequence[Mapping[str, Any]] = (),
        max_seq_len: int = 96,
        expected_hidden: Optional[int] = None,
        expected_queries: Optional[int] = None,
        expected_frames: Optional[int] = None,
        max_frames: Optional[int] = None,
        use_raw_video: bool = False,
        videos_dir: Optional[str | os.PathLike] = None,
        processor=None,
        num_frames: int = 12,
        sampling: str = "uniform",
        boundary_window: float = 2.0,
    ) -> None:
        self.split = split
        self.training = training
        self.annotation_path = Path(annotation_path)
        self.has_captions = split != "test"
        self.max_seq_len = int(max_seq_len)
        self.expected_hidden = expected_hidden
        self.expected_queries = expected_queries
        self.expected_frames = expected_frames
        self.max_frames = max_frames
        self.use_raw_video = use_raw_video
        self.processor = processor
        self.num_frames = num_frames
        self.sampling = sampling
        self.boundary_window = boundary_window
        if self.max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")

        if use_raw_video:
            if videos_dir is None:
                raise DataError("use_raw_video needs 'videos_dir' (datasets.<name>.videos_dir)")
            if processor is None:
                raise DataError("use_raw_video needs an image processor (datasets.<name>.vis_processor)")
            if max_frames is not None and num_frames > max_frames:
                raise DataError(f"vis_processor.num_frames={num_frames} but the model takes at most {max_frames} frames "
                                "(model.adapter.max_frame_pos)")
            self.videos_dir: Optional[Path] = Path(videos_dir)
            self.features_dir: Optional[Path] = None
        else:
            if features_dir is None:
                raise DataError("the cached-feature path needs 'features_dir' (datasets.<name>.features_dir)")
            self.features_dir = Path(features_dir)
            self.videos_dir = None
            if not self.features_dir.is_dir():
                raise FileNotFoundError(f"features_dir not found: {self.features_dir}")

        self.other_feats = []
        for i, of in enumerate(other_feats):
            for key in ("name", "dir", "dim"):
                if key not in of or of[key] in (None, "???"):
                    raise DataError(f"other_feats[{i}] is missing key '{key}'")
            d = Path(of["dir"])
            if not d.is_dir():
                raise FileNotFoundError(f"other_feats[{i}] ('{of['name']}') dir not found: {d}")
            self.other_feats.append({"name": str(of["name"]), "dir": d, "dim": int(of["dim"])})

        video_info = read_json(video_info_path, "video_info")
        if not isinstance(video_info, dict):
            raise DataError(f"{video_info_path}: expected a JSON object {{youtube_id: duration}}")
        records = load_annotations(self.annotation_path, with_captions=self.has_captions)

        self.boundaries: List[Dict[str, Any]] = []
        self.samples: List[tuple] = []  # (boundary index, type)
        self.sample_boundary_index: List[int] = []
        self._paths: Dict[str, Dict[str, Path]] = {}
        reasons = {"no duration": 0, "no features": 0}
        bad_times: List[str] = []
        for rec in records:
            vid = rec["video_id"]
            duration = video_info.get(vid)
            if duration is not None:
                duration = _number(duration, Path(video_info_path), vid, "duration", what="video")
                if duration <= 0:
                    raise DataError(f"{video_info_path}: key '{vid}' has non-positive duration {duration}")
            available = duration is not None
            if not available:
                reasons["no duration"] += 1
            else:
                paths = self._input_paths(vid)
                if paths is None:
                    available = False
                    reasons["no features"] += 1
                else:
                    self._paths[vid] = paths
            if duration is not None:
                problem = boundary_time_problem(rec["timestamp"], rec["prev_timestamp"], rec["next_timestamp"], duration)
                if problem:
                    bad_times.append(f"'{rec['boundary_id']}': {problem}")
            rec = dict(rec, duration=duration, available=available)
            bidx = len(self.boundaries)
            self.boundaries.append(rec)
            if available:
                for t in TYPES:
                    self.samples.append((bidx, t))
                    self.sample_boundary_index.append(bidx)
        if bad_times:
            raise DataError(f"{self.annotation_path}: {len(bad_times)} boundaries with impossible times (durations from "
                            f"{video_info_path}): {'; '.join(bad_times[:5])}{' ...' if len(bad_times) > 5 else ''}")
        self.num_unavailable = sum(reasons.values())
        if self.num_unavailable:
            what = "skipped for training" if training else "listed without samples (empty captions in a submission)"
            log = logger.warning if training else logger.info
            log(
                "%s (%s): %d of %d boundaries unavailable (%d no duration in video_info, %d no %s), %s",
                self.annotation_path, split, self.num_unavailable, len(self.boundaries), reasons["no duration"],
                reasons["no features"], "video file" if use_raw_video else "features file", what,
            )

    def _input_paths(self, vid: str) -> Optional[Dict[str, Path]]:
        """Paths of this video's inputs, or None if any is missing."""
        paths: Dict[str, Path] = {}
        if self.use_raw_video:
            p = find_video(self.videos_dir, vid)  # type: ignore[arg-type]
            if p is None:
                return None
            paths["video"] = p
        else:
            p = self.features_dir / f"{vid}.npy"  # type: ignore[operator]
            if not p.is_file():
                return None
            paths["q_tokens"] = p
        for of in self.other_feats:
            for ext in (".npy", ".pkl"):
                p = of["dir"] / f"{vid}{ext}"
                if p.is_file():
                    paths["other:" + of["name"]] = p
                    break
            else:
                return None
        return paths

    def __len__(self) -> int:
        return len(self.samples)

    # ------------------------------------------------------------------ loading inputs
    def _load_q_tokens(self, path: Path) -> torch.Tensor:
        arr = load_feature_array(path)
        check_q_tokens(arr, path, self.expected_frames, self.expected_queries, self.expected_hidden, self.max_frames)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))  # (T, Q, H)

    def _load_other(self, of: Dict[str, Any], path: Path) -> np.ndarray:
        arr = load_feature_array(path)
        if arr.ndim != 2 or arr.shape[1] != of["dim"] or arr.shape[0] < 1:
            raise DataError(
                f"other features file {path} (key '{of['name']}'): expected shape (t, {of['dim']}), got "
                f"{tuple(arr.shape)} (model.adapter.other_feats dim); re-extract them "
                "(python -m llmva_gebc.other_feats extract ...) or fix the configured dim"
            )
        return resample_nearest(arr, self.max_seq_len).astype(np.float32)  # (S, d)

    def _load_frames(self, path: Path, rec: Dict[str, Any]) -> torch.Tensor:
        from llmva_gebc.data.video import read_frames

        frames = read_frames(
            path, self.num_frames, sampling=self.sampling, boundary=rec["timestamp"], window=self.boundary_window
        )  # (T, h, w, 3) uint8
        return self.processor(frames)  # (T, 3, 224, 224)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        bidx, ctype = self.samples[index]
        rec = self.boundaries[bidx]
        paths = self._paths[rec["video_id"]]
        sample: Dict[str, Any] = {
            "boundary_id": rec["boundary_id"],
            "video_id": rec["video_id"],
            "type": ctype,
            "label": rec["label"],
            "prompt": build_prompt(rec["label"], ctype),
            "caption": rec["references"][ctype] if rec["references"] is not None else None,
            "ref_points": reference_points(
                rec["timestamp"], rec["prev_timestamp"], rec["next_timestamp"], rec["duration"]
            ),  # (2,) float64
            "timestamp": rec["timestamp"],
            "duration": rec["duration"],
        }
        if self.use_raw_video:
            sample["frames"] = self._load_frames(paths["video"], rec)  # (T, 3, 224, 224)
        else:
            sample["q_tokens"] = self._load_q_tokens(paths["q_tokens"])  # (T, Q, H)
        if self.other_feats:
            parts = [self._load_other(of, paths["other:" + of["name"]]) for of in self.other_feats]
            sample["other_feats"] = torch.from_numpy(np.concatenate(parts, axis=1))  # (S, sum_d)
        return sample

    def collater(self, samples):
        from llmva_gebc.data.collate import collate_gebc

        return collate_gebc(samples)


# --------------------------------------------------------------------------------------- builder
def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def resolve_path(root: Optional[str], p: Optional[str]) -> Optional[Path]:
    if p is None:
        return None
    path = Path(os.path.expanduser(str(p)))
    if root is not None and not path.is_absolute():
        path = Path(os.path.expanduser(str(root))) / path
    return path


def check_other_feats(
    ds_other: Sequence[Mapping[str, Any]], expected_other: Optional[Sequence[Mapping[str, Any]]], ds_name: str
) -> None:
    """The dataset's other features must be the model's (``model.adapter.other_feats``), in order."""
    if expected_other is None:
        return
    exp = {str(_get(e, "name")): int(_get(e, "dim")) for e in expected_other}
    for i, of in enumerate(ds_other):
        name, dim = str(_get(of, "name")), int(_get(of, "dim"))
        key = f"datasets.{ds_name}.other_feats[{i}]"
        if name not in exp:
            raise DataError(f"unknown other feature '{name}' at config key '{key}.name'; the model knows: {sorted(exp)}")
        if exp[name] != dim:
            raise DataError(f"config key '{key}.dim' is {dim} but the model's other feature '{name}' has dim {exp[name]}")
    got = [str(_get(of, "name")) for of in ds_other]
    want = [str(_get(e, "name")) for e in expected_other]
    if got != want:
        raise DataError(f"datasets.{ds_name}.other_feats names {got} must equal model.adapter.other_feats {want} (same order)")


@DATASETS.register("gebc")
def build_gebc(
    ds_cfg: Any,
    split: str,
    *,
    training: bool,
    expected_hidden: Optional[int] = None,
    expected_queries: Optional[int] = None,
    expected_frames: Optional[int] = None,
    max_frames: Optional[int] = None,
    expected_other_feats: Optional[Sequence[Mapping[str, Any]]] = None,
    name: str = "gebc",
) -> GEBCDataset:
    """Build the GEBC dataset of ``split`` from a ``DatasetConfig`` node.

    Reads ``root`` (prefix of relative paths), ``annotations[split]``, ``video_info``, ``features_dir``
    or (``use_raw_video``) ``videos_dir`` + ``vis_processor``, ``other_feats`` and ``max_seq_len``.
    ``expected_hidden``/``expected_queries``/``expected_frames`` (from the model config:
    ``adapter.hidden_size``, ``encoder.num_query_tokens``) and ``max_frames`` (the model's limit on T,
    ``adapter.max_frame_pos``) are checked against each features file;
    ``expected_other_feats`` (``model.adapter.other_feats``) against ``other_feats``.
    """
    root = _get(ds_cfg, "root")
    anns = _get(ds_cfg, "annotations") or {}
    if split not in anns:
        raise DataError(f"datasets.{name}.annotations has no entry for split '{split}' (has: {sorted(anns)})")
    video_info = _get(ds_cfg, "video_info")
    if video_info is None:
        raise DataError(f"datasets.{name}.video_info must be set")
    other = [
        {"name": _get(o, "name"), "dir": str(resolve_path(root, _get(o, "dir"))), "dim": _get(o, "dim")}
        for o in (_get(ds_cfg, "other_feats") or [])
    ]
    check_other_feats(other, expected_other_feats, name)
    use_raw = bool(_get(ds_cfg, "use_raw_video", False))
    proc_cfg = _get(ds_cfg, "vis_processor")
    processor = None
    if use_raw:
        from llmva_gebc.data.processors import build_processor

        processor = build_processor(proc_cfg, training=training)
    return GEBCDataset(
        resolve_path(root, anns[split]),
        resolve_path(root, video_info),
        split=split,
        training=training,
        features_dir=resolve_path(root, _get(ds_cfg, "features_dir")),
        other_feats=other,
        max_seq_len=int(_get(ds_cfg, "max_seq_len", 96)),
        expected_hidden=expected_hidden,
        expected_queries=expected_queries,
        expected_frames=expected_frames,
        max_frames=max_frames,
        use_raw_video=use_raw,
        videos_dir=resolve_path(root, _get(ds_cfg, "videos_dir")),
        processor=processor,
        num_frames=int(_get(proc_cfg, "num_frames", 12)),
        sampling=str(_get(proc_cfg, "sampling", "uniform")),
        boundary_window=float(_get(proc_cfg, "boundary_window", 2.0)),
    )


__all__ = [
    "TYPES", "LABELS", "DataError", "GEBCDataset", "build_gebc", "build_prompt", "reference_points",
    "resample_nearest", "load_annotations", "load_feature_array", "check_q_tokens", "boundary_time_problem",
    "TIME_TOLERANCE", "video_id_of", "read_json", "resolve_path", "caption_problem",
]
