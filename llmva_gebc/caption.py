"""Caption the boundaries of one video from the command line.

    python -m llmva_gebc.caption VIDEO.mp4 --cfg-path CONFIG.yaml [--ckpt DIR]
        (--boundaries 2.4,6.1 [--labels "Change of Action,Change of Color"] | --annotations FILE)
        [--duration S] [--features-dir DIR] [--no-cache] [--device cpu] [--json] [--options k=v ...]

* ``--boundaries auto``: find the boundaries automatically (``llmva_gebc.boundaries``, settings
  ``model.boundary_detector``); the prompt's label is ``--labels`` (one for all) or the default
  ``model.boundary_detector.label``, and the output says which (``label_source``).
* ``--boundaries``: timestamps in seconds, comma-separated; each must satisfy 0 < t < duration.
  prev/next timestamps (the second reference point) are the neighbouring boundaries, with 0 before
  the first and the clip's end after the last, as the GEBC annotation defines them.
* ``--labels``: the boundary type(s) for the prompt, one for all or one per boundary
  (comma-separated), among "Change of Action" (default, the most common), "Change of Subject",
  "Change of Object Being Interacted", "Change of Color", "Multiple" (case-insensitive).
* ``--annotations``: caption every boundary of this video's id (the file stem) in a GEBC annotation
  file, with its own timestamps, prev/next and labels.
* Features: ``<features-dir>/<video_id>.npy`` (default: the config's ``datasets.<name>.features_dir``)
  is reused when it exists; otherwise the video is decoded and encoded (``--no-cache`` forces that).
* Duration: ``--duration``, else the config's ``video_info`` when it lists the video id, else the file's.

Prints a table (one row per boundary) or, with ``--json``, a JSON list of
``{boundary_id, boundary, label, prev_timestamp, next_timestamp, duration, subject, status_before,
status_after}``. Exit status 2 with a one-line message for bad input (missing or corrupt video,
timestamp outside the clip, unknown label).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from typing import List, Optional, Sequence

from llmva_gebc import cli
from llmva_gebc.api import DEFAULT_LABEL, CaptionError, load
from llmva_gebc.config import add_config_args
from llmva_gebc.data.gebc import LABELS, TYPES

HEADERS = {"subject": "subject", "status_before": "status before", "status_after": "status after"}


def parse_timestamps(text: str, what: str = "--boundaries", empty_hint: str = "") -> List[float]:
    """'2.4, 6.1' (separated by commas, semicolons or spaces) → [2.4, 6.1], in seconds.

    Raises CaptionError naming ``what`` and the bad part, or when no timestamp is given
    (``empty_hint`` says what to do then). Used by this CLI and the web UI."""
    out = []
    for part in str(text or "").replace(";", ",").replace(" ", ",").split(","):
        if part.strip():
            try:
                out.append(float(part))
            except ValueError:
                raise CaptionError(f"{what}: {part!r} is not a number of seconds (expected e.g. 2.4,6.1)") from None
    if not out:
        raise CaptionError(f"{what} is empty (expected e.g. 2.4,6.1){empty_hint}")
    return out


def printable(text: str) -> str:
    """Control characters (which an untrained LLM may emit) escaped, so that table columns line up."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_table(rows: Sequence[dict], width: int = 40) -> str:
    """Plain-text table, one boundary per row (captions wrapped at ``width`` characters)."""
    head = ["boundary", "t (s)", "label"] + [HEADERS[t] for t in TYPES]
    cells = []
    for r in rows:
        cells.append([[r["boundary_id"]], [f"{r['boundary']:.2f}"], textwrap.wrap(r["label"], 20) or [""]]
                     + [textwrap.wrap(printable(r[t]), width) or [""] for t in TYPES])
    widths = [max([len(head[c])] + [len(line) for row in cells for line in row[c]]) for c in range(len(head))]

    def line(parts):
        return " | ".join(p.ljust(w) for p, w in zip(parts, widths)).rstrip()

    out = [line(head), "-+-".join("-" * w for w in widths)]
    for row in cells:
        for k in range(max(len(c) for c in row)):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llmva_gebc.caption",
        description="Caption the event boundaries of a video (subject, status before, status after).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"labels: {', '.join(LABELS)}",
    )
    p.add_argument("video", help="video file; its stem is the video id (for the feature cache and --annotations)")
    add_config_args(p)
    p.add_argument("--ckpt", default=None, help="trained weights: a run's checkpoint dir or a .safetensors/.pth")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--boundaries", help="boundary timestamps in seconds, comma-separated, e.g. 2.4,6.1; "
                   "or 'auto' to detect them")
    g.add_argument("--annotations", help="GEBC annotation JSON: caption this video's boundaries from it")
    p.add_argument("--labels", "--label", dest="labels", default=None,
                   help=f"boundary label(s), one for all or comma-separated per boundary (default: {DEFAULT_LABEL})")
    p.add_argument("--duration", type=float, default=None, help="clip duration in seconds (default: video_info or the file)")
    p.add_argument("--features-dir", default=None, help="extraction cache to reuse <dir>/<video_id>.npy from "
                   "(default: datasets.<name>.features_dir)")
    p.add_argument("--video-info", default=None, help="video_info.json for durations (default: datasets.<name>.video_info)")
    p.add_argument("--dataset", default=None, help="datasets.<name> for the processor/cache settings (default: gebc)")
    p.add_argument("--no-cache", action="store_true", help="always decode and encode the video")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: run.device)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per generate call (default: run.batch_size_eval)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (duration and feature source)")
    cli.add_debug_arg(p)
    return p


def _main(argv: Sequence[str]) -> int:
    a = build_parser().parse_args(argv)
    cli.setup_logging(a.debug, level=logging.INFO if a.verbose else logging.WARNING)
    auto = a.boundaries is not None and a.boundaries.strip().lower() == "auto"
    boundaries = parse_timestamps(a.boundaries) if a.boundaries is not None and not auto else None
    labels = [s.strip() for s in a.labels.split(",")] if a.labels else None
    if labels is not None and a.annotations is not None:
        raise CaptionError("--labels goes with --boundaries; --annotations uses the file's labels")
    if auto and labels is not None and len(labels) != 1:
        raise CaptionError("--boundaries auto takes one --labels value for all detected boundaries, "
                           f"got {len(labels)}")
    model = load(a.cfg_path, ckpt=a.ckpt, options=a.options, device=a.device, dataset=a.dataset,
                 features_dir=a.features_dir, video_info=a.video_info, batch_size=a.batch_size)
    if auto:
        rows = model.caption_auto(a.video, label=labels[0] if labels else None, duration=a.duration,
                                  use_cache=not a.no_cache)
    elif boundaries is not None:
        rows = model.caption(a.video, boundaries, labels=labels, duration=a.duration, use_cache=not a.no_cache)
    else:
        rows = model.caption_annotations(a.video, a.annotations, duration=a.duration, use_cache=not a.no_cache)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        if auto:
            print(f"{len(rows)} boundaries detected automatically; label: {rows[0]['label']} "
                  f"({rows[0]['label_source']})")
        print(format_table(rows))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
