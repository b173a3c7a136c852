"""A self-contained HTML report of an evaluation run (``report.html``: no external files, no script).

Contents: the per-type metric table (CIDEr, SPICE, ROUGE-L, their means and the score), the per-label
table (when the metrics have ``per_label``) and, for the
first ``max_boundaries`` boundaries in split order: id, label, timestamp, two thumbnails (the frames
at ``timestamp - delta`` and ``timestamp + delta``, when the video is in ``videos_dir``), and per
caption type the predicted and reference captions with the boundary's ROUGE-L. Thumbnails are JPEGs
made with Pillow and inlined as ``data:`` URIs, so the file can be mailed or archived alone.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from llmva_gebc.eval.metrics import SUBMISSION_KEYS, TYPES, per_boundary_rouge

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
THUMB_WIDTH = 192

_CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:24px 0 8px}
.meta{color:#555;font-size:13px;margin-bottom:12px}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #d0d0d0;padding:4px 8px;font-size:13px;vertical-align:top;text-align:left}
th{background:#eef1f5}
table.metrics td.num{text-align:right;font-variant-numeric:tabular-nums}
table.metrics tr.mean td{font-weight:600;background:#f6f8fa}
.score{font-size:15px;margin:8px 0}
.boundary{background:#fff;border:1px solid #d0d0d0;border-radius:6px;padding:10px;margin:10px 0}
.boundary .head{font-size:14px;margin-bottom:6px}.boundary .head code{font-size:13px}
.label{display:inline-block;background:#e6eefc;border-radius:4px;padding:1px 6px;margin-left:6px;font-size:12px}
.thumbs{display:flex;gap:10px;margin:6px 0}
.thumbs figure{margin:0}.thumbs figcaption{font-size:12px;color:#555;text-align:center}
.thumbs img{display:block;border:1px solid #bbb;image-rendering:auto}
.novideo{font-size:12px;color:#888;margin:6px 0}
table.caps{width:100%}table.caps td.r{width:70px;text-align:right}
.empty{color:#b00;font-style:italic}
"""


def _fmt(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


def _find_video(videos_dir: Optional[str | os.PathLike], video_id: str) -> Optional[Path]:
    if videos_dir is None:
        return None
    for ext in VIDEO_EXTS:
        p = Path(videos_dir) / f"{video_id}{ext}"
        if p.is_file():
            return p
    return None


def frames_at(path: str | os.PathLike, times: Sequence[float]):
    """RGB uint8 arrays (H, W, 3) of the decoded frames nearest to each time (seconds), via PyAV."""
    import av

    best: List[Tuple[float, object]] = [(float("inf"), None) for _ in times]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else 0.0
            for k, want in enumerate(times):
                d = abs(t - want)
                if d < best[k][0]:
                    best[k] = (d, frame.to_ndarray(format="rgb24"))
    if any(f is None for _, f in best):
        raise ValueError(f"no frames decoded from {path}")
    return [f for _, f in best]


def thumbnail_data_uri(rgb, width: int = THUMB_WIDTH) -> str:
    """A ``data:image/jpeg;base64,...`` URI of an RGB uint8 array, resized to ``width`` px."""
    from PIL import Image

    img = Image.fromarray(rgb)
    h = max(1, round(img.height * width / img.width))
    img = img.resize((width, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbs(videos_dir, video_id: str, timestamp: float, delta: float) -> Optional[List[Tuple[str, str]]]:
    path = _find_video(videos_dir, video_id)
    if path is None:
        return None
    times = [max(0.0, timestamp - delta), timestamp + delta]
    try:
        frames = frames_at(path, times)
    except Exception as e:  # a broken video should not lose the whole report
        logger.warning("report: cannot decode %s: %s", path, e)
        return None
    return [(f"before (t={times[0]:.2f}s)", thumbnail_data_uri(frames[0])),
            (f"after (t={times[1]:.2f}s)", thumbnail_data_uri(frames[1]))]


def _metrics_table(metrics: Optional[Mapping]) -> str:
    if not metrics:
        return "<p class='meta'>No references for this split: no metrics.</p>"
    rows = ["<table class='metrics'><tr><th>type</th><th>CIDEr</th><th>SPICE</th><th>ROUGE_L</th></tr>"]
    for t in TYPES:
        m = metrics[t]
        rows.append(f"<tr><td>{t}</td><td class='num'>{_fmt(m['CIDEr'])}</td><td class='num'>{_fmt(m['SPICE'])}</td>"
                    f"<td class='num'>{_fmt(m['ROUGE_L'])}</td></tr>")
    rows.append(f"<tr class='mean'><td>mean</td><td class='num'>{_fmt(metrics['CIDEr'])}</td>"
                f"<td class='num'>{_fmt(metrics['SPICE'])}</td><td class='num'>{_fmt(metrics['ROUGE_L'])}</td></tr>")
    rows.append("</table>")
    if metrics.get("score") is not None:
        score = f"score (mean of CIDEr, SPICE, ROUGE_L): <b>{_fmt(metrics['score'])}</b>"
    else:
        score = (f"score: — (SPICE unavailable); mean of CIDEr and ROUGE_L: "
                 f"<b>{_fmt(metrics.get('score_without_spice'))}</b>")
    rows.append(f"<p class='score'>{score} over {metrics.get('num_boundaries', '?')} boundaries</p>")
    if metrics.get("per_label"):
        rows.append("<h2>Per boundary label</h2><p class='meta'>Mean of the label's per-boundary scores "
                    "(CIDEr-D with the whole split's document frequencies).</p><table class='metrics'><tr><th>label</th>"
                    "<th>boundaries</th>" + "".join(f"<th>{t} CIDEr</th>" for t in TYPES)
                    + "<th>CIDEr</th><th>ROUGE_L</th></tr>")
        for label, m in metrics["per_label"].items():
            rows.append(f"<tr><td>{html.escape(label)}</td><td class='num'>{m['num_boundaries']}</td>"
                        + "".join(f"<td class='num'>{_fmt(m[t]['CIDEr'])}</td>" for t in TYPES)
                        + f"<td class='num'>{_fmt(m['CIDEr'])}</td><td class='num'>{_fmt(m['ROUGE_L'])}</td></tr>")
        rows.append("</table>")
    return "\n".join(rows)


def _caption_cell(text: Optional[str]) -> str:
    if text is None:
        return "<td class='empty'>—</td>"
    if not text.strip():
        return "<td class='empty'>(empty)</td>"
    return f"<td>{html.escape(text)}</td>"


def write_report(run_dir: str | os.PathLike, metrics: Optional[Mapping], predictions: Sequence[Mapping],
                 references: Optional[Mapping[str, Mapping[str, str]]], boundaries: Sequence[Mapping],
                 videos_dir: Optional[str | os.PathLike] = None, max_boundaries: int = 100, *,
                 split: str = "", delta: float = 0.5, filename: str = "report.html") -> Path:
    """Write ``<run_dir>/report.html`` and return its path (see the module docstring).

    ``predictions``: ``{"boundary_id", "type", "caption"}`` records; ``references``: submission layout
    (``{boundary_id: {"Subject", ...}}``) or None; ``boundaries``: records with ``boundary_id``,
    ``label``, ``timestamp`` (and ``video_id``, else the id's first 11 characters).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pred: Dict[str, Dict[str, str]] = {}
    for p in predictions:
        pred.setdefault(p["boundary_id"], {})[p["type"]] = p["caption"]
    shown = list(boundaries)[:max(0, int(max_boundaries))]
    rouge: Dict[str, Dict[str, float]] = {}
    if references:
        ids = [b["boundary_id"] for b in shown if b["boundary_id"] in references]
        sub = {i: {SUBMISSION_KEYS[t]: pred.get(i, {}).get(t, "") for t in TYPES} for i in ids}
        rouge = per_boundary_rouge(sub, {i: references[i] for i in ids})

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>GEBC report {html.escape(run_dir.name)} {html.escape(split)}</title><style>{_CSS}</style></head><body>",
             f"<h1>GEBC evaluation: {html.escape(run_dir.name)}{' / ' + html.escape(split) if split else ''}</h1>",
             f"<div class='meta'>{len(boundaries)} boundaries, {len(predictions)} predicted captions; showing the first "
             f"{len(shown)} boundaries. Thumbnails at timestamp ± {delta:g} s.</div>",
             "<h2>Metrics</h2>", _metrics_table(metrics), "<h2>Boundaries</h2>"]
    n_thumbs = 0
    for b in shown:
        bid = b["boundary_id"]
        vid = b.get("video_id") or bid[:11]
        ts = float(b.get("timestamp", 0.0))
        head = (f"<div class='head'><code>{html.escape(bid)}</code><span class='label'>{html.escape(str(b.get('label', '')))}"
                f"</span> · t = {ts:.2f} s{'' if b.get('available', True) else ' · <i>no input: empty captions</i>'}</div>")
        thumbs = _thumbs(videos_dir, vid, ts, delta)
        if thumbs:
            n_thumbs += 1
            figs = "".join(f"<figure><img src='{uri}' width='{THUMB_WIDTH}' alt='{html.escape(bid)} {cap}'>"
                           f"<figcaption>{cap}</figcaption></figure>" for cap, uri in thumbs)
            media = f"<div class='thumbs'>{figs}</div>"
        else:
            media = "<div class='novideo'>no video</div>"
        rows = ["<table class='caps'><tr><th>type</th><th>predicted</th><th>reference</th><th>ROUGE-L</th></tr>"]
        for t in TYPES:
            ref = references[bid][SUBMISSION_KEYS[t]] if references and bid in references else None
            r = rouge.get(bid, {}).get(t)
            rows.append(f"<tr><td>{t}</td>{_caption_cell(pred.get(bid, {}).get(t, ''))}{_caption_cell(ref)}"
                        f"<td class='r'>{_fmt(r)}</td></tr>")
        rows.append("</table>")
        parts.append(f"<div class='boundary' id='{html.escape(bid)}'>{head}{media}{''.join(rows)}</div>")
    parts.append("</body></html>")
    path = run_dir / filename
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    logger.info("report: %d boundaries, %d with thumbnails -> %s", len(shown), n_thumbs, path)
    return path


__all__ = ["write_report", "frames_at", "thumbnail_data_uri"]
