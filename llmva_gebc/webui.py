"""A local web demo: pick or upload a video, detect or type its event boundaries, get the captions.

    python -m llmva_gebc.webui --cfg-path CONFIG.yaml [--ckpt RUN_DIR/checkpoint_best]
        [--examples DIR] [--host 127.0.0.1] [--port 7860] [--device cpu] [--options k=v ...]

Needs the optional extra: ``pip install 'llmva-gebc[webui]'`` (Gradio; see the README for the one
package installed with ``--no-deps``). The app (Gradio Blocks) serves on ``--host`` (localhost by
default, nothing is shared publicly) and offers:

* a video: uploaded, or picked from ``--examples`` (default: the config's ``datasets.<gebc>.videos_dir``,
  e.g. the demo's synthetic clips);
* boundaries: typed (``2.4, 6.1`` seconds) or found by **Detect** (``Captioner.detect_boundaries``,
  the ``model.boundary_detector`` settings), with the GEBC label for the prompt (a dropdown; the
  detector cannot tell it, so the result says where it came from);
* **Caption**: a table, one row per boundary, with thumbnails of the frames before and after it, the
  subject, status before and status after (``Captioner.caption`` / ``caption_auto``), and a JSON file
  of the rows to download.

Everything runs in this process with the loaded model; nothing leaves the machine (Gradio's
analytics are switched off).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
THUMB_PX = 96


# ------------------------------------------------------------------------------------------ helpers
def parse_boundaries(text: str) -> List[float]:
    """'2.4, 6.1' → [2.4, 6.1] (``caption.parse_timestamps``); raises CaptionError naming the bad part."""
    from llmva_gebc.caption import parse_timestamps

    return parse_timestamps(text, what="boundaries", empty_hint=": type them or press Detect")


def thumbnails(video: str | os.PathLike, rows: Sequence[Dict[str, Any]], duration: float
               ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(before, after) uint8 frames for each row: the frames nearest ``t - d`` and ``t + d``, with
    ``d = min(0.5 s, half the distance to the neighbouring boundary)``."""
    from llmva_gebc.data.video import read_frames

    n = int(min(max(round(duration * 8), 8), 96))
    frames = read_frames(video, n)  # (n, H, W, 3), uniform over the clip
    times = (np.arange(n) + 0.5) * duration / n

    def at(t: float) -> np.ndarray:
        return frames[int(np.argmin(np.abs(times - t)))]

    out = []
    for r in rows:
        t = float(r["boundary"])
        d_before = min(0.5, (t - float(r["prev_timestamp"])) / 2)
        d_after = min(0.5, (float(r["next_timestamp"]) - t) / 2)
        out.append((at(t - d_before), at(t + d_after)))
    return out


def _img_tag(frame: np.ndarray, alt: str) -> str:
    from PIL import Image

    im = Image.fromarray(frame)
    im.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" width="{im.width}" height="{im.height}">'


def rows_table(rows: Sequence[Dict[str, Any]], thumbs: Optional[Sequence[Tuple[np.ndarray, np.ndarray]]] = None) -> str:
    """The result table (HTML, ``id="gebc-results"``), one ``<tr class="boundary">`` per boundary."""
    from llmva_gebc.caption import printable

    head = ["boundary (s)", "label", "before", "after", "subject", "status before", "status after"]
    out = ['<table id="gebc-results" class="gebc-results"><thead><tr>'
           + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        before, after = (_img_tag(thumbs[i][0], f"before {r['boundary']:.2f} s"),
                         _img_tag(thumbs[i][1], f"after {r['boundary']:.2f} s")) if thumbs else ("", "")
        cells = [f"{r['boundary']:.2f}", html.escape(r["label"]), before, after]
        cells += [html.escape(printable(r[k])) for k in ("subject", "status_before", "status_after")]
        out.append('<tr class="boundary">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def list_examples(folder: Optional[str | os.PathLike], limit: int = 50) -> List[str]:
    if folder is None or not Path(folder).is_dir():
        return []
    return [str(p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES][:limit]


# ------------------------------------------------------------------------------------------ the app
class Demo:
    """The app's callbacks around a loaded :class:`llmva_gebc.api.Captioner` (testable without a browser)."""

    def __init__(self, captioner, examples: Sequence[str] = ()) -> None:
        self.cap = captioner
        self.examples = list(examples)
        self.out_dir = Path(tempfile.mkdtemp(prefix="llmva_webui_"))

    @staticmethod
    def video_of(upload: Any, example: Optional[str]) -> str:
        from llmva_gebc.api import CaptionError

        path = upload if isinstance(upload, str) else getattr(upload, "name", None)
        path = path or example
        if not path:
            raise CaptionError("no video: upload one or pick an example")
        return str(path)

    def detect(self, upload: Any, example: Optional[str]) -> Tuple[str, str]:
        """(boundaries text, status line)."""
        video = self.video_of(upload, example)
        det = self.cap.detect_boundaries(video)
        times = ", ".join(f"{b['timestamp']:.2f}" for b in det["boundaries"])
        status = (f"Detected {len(det['boundaries'])} boundaries in {Path(video).name} "
                  f"({det['duration']:.2f} s, {det['features']} features). Pick the label, then Caption.")
        return times, status

    def caption(self, upload: Any, example: Optional[str], boundaries: str, label: str, detected: str
                ) -> Tuple[str, Optional[str], str]:
        """(table HTML, JSON file path, status line)."""
        video = self.video_of(upload, example)
        times = parse_boundaries(boundaries)
        rows = self.cap.caption(video, times, labels=[label])
        auto = detected.strip() == boundaries.strip() and bool(detected.strip())
        for r in rows:
            r["boundary_source"] = "auto" if auto else "user"
            r["label_source"] = "user"
        thumbs = thumbnails(video, rows, rows[0]["duration"])
        path = self.out_dir / f"{Path(video).stem}_boundaries.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, path)
        status = f"Captioned {len(rows)} boundaries of {Path(video).name} with label '{label}'."
        return rows_table(rows, thumbs), str(path), status

    def build(self):
        """The Gradio Blocks app."""
        import gradio as gr

        from llmva_gebc.data.gebc import LABELS

        def guarded(fn, n_out):
            def run(*args):
                try:
                    return fn(*args)
                except Exception as e:  # shown in the page, the app stays up
                    log.warning("webui: %s: %s", type(e).__name__, e)
                    return (*([gr.update()] * (n_out - 1)), f"Error: {e}")
            return run

        with gr.Blocks(title="LLMVA-GEBC: caption the event boundaries of a video", analytics_enabled=False) as app:
            gr.Markdown("## Generic Event Boundary Captioning\nUpload a video or pick an example, type boundaries "
                        "(seconds) or press **Detect**, then **Caption**.")
            with gr.Row():
                upload = gr.File(label="Upload a video", file_types=list(VIDEO_SUFFIXES), type="filepath",
                                 elem_id="video-upload")
                example = gr.Dropdown(choices=self.examples, value=None, label="…or pick an example",
                                      allow_custom_value=False, elem_id="example-video")
            with gr.Row():
                boundaries = gr.Textbox(label="Boundaries (seconds, comma-separated)", placeholder="2.4, 6.1",
                                        elem_id="boundaries")
                label = gr.Dropdown(choices=list(LABELS), value="Change of Action", label="Boundary label",
                                    elem_id="label")
            detected = gr.State("")
            with gr.Row():
                detect_btn = gr.Button("Detect", elem_id="detect")
                caption_btn = gr.Button("Caption", variant="primary", elem_id="caption")
            status = gr.Markdown("", elem_id="status")
            table = gr.HTML("", elem_id="results")
            download = gr.File(label="Rows as JSON", elem_id="download", interactive=False)

            def on_detect(u, e):
                times, msg = self.detect(u, e)
                return times, times, msg

            detect_btn.click(guarded(on_detect, 3), [upload, example], [boundaries, detected, status])
            caption_btn.click(guarded(self.caption, 3), [upload, example, boundaries, label, detected],
                              [table, download, status])
        return app


def launch(app, host: str = "127.0.0.1", port: Optional[int] = None, block: bool = True):
    """Start the app's server; returns the app (with ``block=False`` the server runs in a thread)."""
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
               show_error=True, quiet=not block)
    return app


def _main(argv: Sequence[str]) -> int:
    from llmva_gebc import cli
    from llmva_gebc.api import load
    from llmva_gebc.config import add_config_args
    from llmva_gebc.data.gebc import resolve_path
    from llmva_gebc.errors import UserError

    p = argparse.ArgumentParser(prog="python -m llmva_gebc.webui", description="Local web demo (Gradio).")
    add_config_args(p)
    p.add_argument("--ckpt", default=None, help="trained weights: a run's checkpoint dir or a .safetensors/.pth")
    p.add_argument("--examples", default=None, help="folder of example videos (default: the dataset's videos_dir)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: run.device)")
    cli.add_debug_arg(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.debug)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web demo needs Gradio: pip install 'llmva-gebc[webui]' (see the README)") from None
    cap = load(a.cfg_path, ckpt=a.ckpt, options=a.options, device=a.device)  # user errors: one line, exit 2
    folder = a.examples
    if folder is None and cap.dataset_name is not None:
        ds = cap.cfg.datasets[cap.dataset_name]
        folder = resolve_path(ds.root, ds.videos_dir)
    launch(Demo(cap, list_examples(folder)).build(), a.host, a.port, block=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
