"""Pretraining / instruction datasets on raw frames: WebVid, CC3M, VideoChat-instruct.

Every sample has the keys of a GEBC sample so the same collater and model take it:
``frames`` (T, 3, S, S) float (images: the image repeated T times), ``prompt``, ``caption`` (the target text),
``ref_points`` = [0.5, 1.0] float64 (a neutral "whole clip" boundary), ``boundary_id`` = ``video_id``
= the sample id, ``type`` = "caption", ``label`` = "", ``timestamp`` = ``duration`` = None.

Layouts (``datasets.<name>`` fields in brackets):

* ``webvid``: ``annotations[split]`` = a ``.tsv``/``.csv`` file or a folder of them (the released
  ``filter_annotation/*.tsv``) with columns ``videoid``, ``name`` (the caption) and ``page_dir``;
  videos at ``<videos_dir or root/videos>/<page_dir>/<videoid>.mp4``. Or WebDataset tar shards
  (``shards``, a brace pattern) holding ``<key>.mp4`` + ``<key>.txt``; read map-style by indexing
  the tar members once.
* ``cc3m``: ``annotations[split]`` = ``filter_cap.json``, a list of ``{image_id, caption}``; images at
  ``<images_dir or root/image>/<image_id>.jpg``, repeated to ``vis_processor.num_frames`` frames (1 gives
  Video-LLaMA's single frame; the video datasets' T lets images and videos share a batch).
* ``videochat_instruct``: ``annotations[split]`` = a JSON list of ``{video, QA: [{q, a}, ...]}`` (one
  sample per QA pair; prompt = the question) or ``{video, caption}`` (detailed descriptions; prompt =
  ``prompt`` or the default caption prompt); videos at ``<videos_dir or root>/<video>``.

Rows whose media file is missing are dropped at build time with a logged count.
"""
from __future__ import annotations

import csv
import logging
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch.utils.data import Dataset

from llmva_gebc.data.gebc import DataError, _get, read_json, resolve_path
from llmva_gebc.data.processors import build_processor
from llmva_gebc.data.video import read_frames
from llmva_gebc.registry import DATASETS

logger = logging.getLogger(__name__)
DEFAULT_CAPTION_PROMPT = "Describe this video briefly."
DEFAULT_IMAGE_PROMPT = "Describe this image briefly."
NEUTRAL_REF = (0.5, 1.0)


class MediaCaptionDataset(Dataset):
    """Map-style: items are dicts {id, prompt, caption, and media: path | (tar, offset, size) | image}."""

    def __init__(self, items: List[Dict[str, Any]], processor, num_frames: int, kind: str, name: str) -> None:
        self.items = items
        self.processor = processor
        self.num_frames = num_frames
        self.kind = kind  # "video" | "image"
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def _frames(self, it: Dict[str, Any]) -> torch.Tensor:
        if self.kind == "image":
            from PIL import Image

            try:
                with Image.open(it["path"]) as im:
                    img = np.array(im.convert("RGB"))  # (H, W, 3), writable copy
            except Exception as e:
                raise DataError(f"{self.name}: cannot read image {it['path']}: {type(e).__name__}: {e}") from None
            # The image repeated num_frames times, so image and video samples can share a batch.
            return self.processor(np.repeat(img[None], self.num_frames, axis=0))  # (T, 3, S, S)
        if "tar" in it:
            with open(it["tar"], "rb") as f:
                f.seek(it["offset"])
                data = f.read(it["size"])
            with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
                tmp.write(data)
                tmp.flush()
                return self.processor(read_frames(tmp.name, self.num_frames))
        return self.processor(read_frames(it["path"], self.num_frames))  # (T, 3, S, S)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        it = self.items[index]
        return {
            "boundary_id": it["id"],
            "video_id": it["id"],
            "type": "caption",
            "label": "",
            "prompt": it["prompt"],
            "caption": it["caption"],
            "frames": self._frames(it),
            "ref_points": torch.tensor(NEUTRAL_REF, dtype=torch.float64),  # (2,)
            "timestamp": None,
            "duration": None,
        }

    def collater(self, samples):
        from llmva_gebc.data.collate import collate_gebc

        return collate_gebc(samples)


def _common(ds_cfg: Any, training: bool):
    proc_cfg = _get(ds_cfg, "vis_processor")
    return build_processor(proc_cfg, training=training), int(_get(proc_cfg, "num_frames", 8))


def _keep_existing(items: List[Dict[str, Any]], name: str, split: str) -> List[Dict[str, Any]]:
    kept = [it for it in items if "path" not in it or Path(it["path"]).is_file()]
    if len(kept) < len(items):
        logger.warning("%s (%s): %d of %d rows dropped, media file missing", name, split, len(items) - len(kept), len(items))
    if not kept:
        raise DataError(f"{name} ({split}): no usable samples (all {len(items)} media files missing)")
    return kept


def _split_path(ds_cfg: Any, split: str, name: str) -> Path:
    anns = _get(ds_cfg, "annotations") or {}
    if split not in anns:
        raise DataError(f"datasets.{name}.annotations has no entry for split '{split}' (has: {sorted(anns)})")
    return resolve_path(_get(ds_cfg, "root"), anns[split])  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- webvid
def _webvid_rows(path: Path) -> List[Dict[str, str]]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".tsv", ".csv")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .tsv/.csv annotation files in {path}")
    rows = []
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"webvid annotation file not found: {f}")
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if f.suffix == ".tsv" else ",")
            for col in ("videoid", "name", "page_dir"):
                if col not in (reader.fieldnames or []):
                    raise DataError(f"{f}: missing column '{col}' (has {reader.fieldnames})")
            rows.extend(reader)
    return rows


def _index_shards(pattern: str) -> List[Dict[str, Any]]:
    import braceexpand

    items = []
    for shard in braceexpand.braceexpand(pattern):
        if not Path(shard).is_file():
            raise FileNotFoundError(f"webdataset shard not found: {shard}")
        with tarfile.open(shard) as tf:
            members: Dict[str, Dict[str, tarfile.TarInfo]] = {}
            for m in tf.getmembers():
                if m.isfile() and "." in m.name:
                    key, ext = m.name.split(".", 1)
                    members.setdefault(key, {})[ext] = m
            for key, ms in members.items():
                if "mp4" not in ms or "txt" not in ms:
                    logger.warning("%s: sample '%s' lacks mp4 or txt (has %s), skipped", shard, key, sorted(ms))
                    continue
                caption = tf.extractfile(ms["txt"]).read().decode("utf-8").strip()  # type: ignore[union-attr]
                items.append({"id": Path(key).name, "caption": caption, "tar": shard,
                              "offset": ms["mp4"].offset_data, "size": ms["mp4"].size})
    return items


@DATASETS.register("webvid")
def build_webvid(ds_cfg: Any, split: str, *, training: bool, name: str = "webvid", **_: Any) -> MediaCaptionDataset:
    processor, num_frames = _common(ds_cfg, training)
    prompt = _get(ds_cfg, "prompt") or DEFAULT_CAPTION_PROMPT
    shards = _get(ds_cfg, "shards")
    if shards:
        items = _index_shards(str(resolve_path(_get(ds_cfg, "root"), shards)))
    else:
        root = _get(ds_cfg, "root")
        vdir = resolve_path(root, _get(ds_cfg, "videos_dir") or "videos")
        items = [
            {"id": r["videoid"], "caption": r["name"].strip(), "path": str(vdir / r["page_dir"] / f"{r['videoid']}.mp4")}
            for r in _webvid_rows(_split_path(ds_cfg, split, name))
        ]
    for it in items:
        it["prompt"] = prompt
    return MediaCaptionDataset(_keep_existing(items, name, split), processor, num_frames, "video", name)


# --------------------------------------------------------------------------------------- cc3m
@DATASETS.register("cc3m")
def build_cc3m(ds_cfg: Any, split: str, *, training: bool, name: str = "cc3m", **_: Any) -> MediaCaptionDataset:
    processor, _n = _common(ds_cfg, training)
    path = _split_path(ds_cfg, split, name)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{image_id, caption}}")
    idir = resolve_path(_get(ds_cfg, "root"), _get(ds_cfg, "images_dir") or "image")
    prompt = _get(ds_cfg, "prompt") or DEFAULT_IMAGE_PROMPT
    items = []
    for i, row in enumerate(data):
        for key in ("image_id", "caption"):
            if not isinstance(row, dict) or key not in row:
                raise DataError(f"{path}: entry {i} is missing key '{key}'")
        iid = str(row["image_id"])
        items.append({"id": iid, "caption": row["caption"], "prompt": prompt, "path": str(idir / f"{iid}.jpg")})
    return MediaCaptionDataset(_keep_existing(items, name, split), processor, _n, "image", name)


# --------------------------------------------------------------------------------------- videochat
@DATASETS.register("videochat_instruct")
def build_videochat_instruct(
    ds_cfg: Any, split: str, *, training: bool, name: str = "videochat_instruct", **_: Any
) -> MediaCaptionDataset:
    processor, num_frames = _common(ds_cfg, training)
    path = _split_path(ds_cfg, split, name)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{video, QA}} or {{video, caption}} entries")
    root = _get(ds_cfg, "root")
    vdir = resolve_path(root, _get(ds_cfg, "videos_dir")) or (Path(root) if root else Path("."))
    prompt = _get(ds_cfg, "prompt") or DEFAULT_CAPTION_PROMPT
    items = []
    for i, row in enumerate(data):
        if not isinstance(row, dict) or "video" not in row:
            raise DataError(f"{path}: entry {i} is missing key 'video'")
        vpath = str(vdir / row["video"])
        stem = Path(row["video"]).stem
        if "QA" in row:
            for k, qa in enumerate(row["QA"]):
                for key in ("q", "a"):
                    if key not in qa:
                        raise DataError(f"{path}: entry {i} ('{row['video']}') QA[{k}] is missing key '{key}'")
                items.append({"id": f"{stem}_{k}", "prompt": qa["q"].strip(), "caption": qa["a"].strip(), "path": vpath})
        elif "caption" in row:
            items.append({"id": stem, "prompt": prompt, "caption": row["caption"].strip(), "path": vpath})
        else:
            raise DataError(f"{path}: entry {i} ('{row['video']}') has neither key 'QA' nor key 'caption'")
    return MediaCaptionDataset(_keep_existing(items, name, split), processor, num_frames, "video", name)


__all__ = ["MediaCaptionDataset", "build_webvid", "build_cc3m", "build_videochat_instruct", "DEFAULT_CAPTION_PROMPT"]
