"""report.html: content, thumbnails at timestamp ± delta, and rendering in headless Chromium."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llmva_gebc.eval.report import frames_at, write_report

RED, BLUE = (220, 30, 30), (30, 30, 220)
VID = "abcdefghijk"
# Install on Debian/Ubuntu: apt-get install -y --no-install-recommends chromium fonts-dejavu-core
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _make_video(videos_dir: Path) -> Path:
    """4 s at 8 fps, 64x48: red for the first 2 s, blue after (a boundary at t = 2 s)."""
    from llmva_gebc.data.synthetic import encode_mp4

    videos_dir.mkdir(parents=True, exist_ok=True)
    frames = np.zeros((32, 48, 64, 3), np.uint8)
    frames[:16] = RED
    frames[16:] = BLUE
    path = videos_dir / f"{VID}.mp4"
    encode_mp4(frames, path, fps=8)
    return path


def _inputs():
    boundaries = [
        {"boundary_id": f"{VID}_0", "video_id": VID, "label": "Change of Color", "timestamp": 2.0, "available": True},
        {"boundary_id": "zzzzzzzzzzz_0", "video_id": "zzzzzzzzzzz", "label": "Change of Action", "timestamp": 1.0,
         "available": False},
    ]
    preds = [{"boundary_id": f"{VID}_0", "type": t, "caption": c}
             for t, c in (("subject", "red circle"), ("status_before", "red <b>"), ("status_after", "green"))]
    refs = {f"{VID}_0": {"Subject": "red circle", "Status_Before": "red", "Status_After": "blue"},
            "zzzzzzzzzzz_0": {"Subject": "a man", "Status_Before": "standing", "Status_After": "sitting"}}
    metrics = {t: {"CIDEr": 12.5, "SPICE": None, "ROUGE_L": 33.3} for t in ("subject", "status_before", "status_after")}
    metrics.update({"CIDEr": 12.5, "SPICE": None, "ROUGE_L": 33.3, "score": None, "score_without_spice": 22.9,
                    "num_boundaries": 2})
    return metrics, preds, refs, boundaries


def _decode_data_uri(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture
def report(tmp_path):
    videos = tmp_path / "videos"
    _make_video(videos)
    metrics, preds, refs, boundaries = _inputs()
    path = write_report(tmp_path / "run", metrics, preds, refs, boundaries, videos_dir=videos, split="val", delta=0.75)
    return path


def test_frames_at_picks_the_nearest_frames(tmp_path):
    path = _make_video(tmp_path)
    before, after = frames_at(path, [1.25, 2.75])
    assert np.abs(before.reshape(-1, 3).mean(0) - RED).max() < 25
    assert np.abs(after.reshape(-1, 3).mean(0) - BLUE).max() < 25


def test_report_content(report):
    text = report.read_text()
    assert report.name == "report.html"
    assert "<table class='metrics'>" in text and "12.50" in text and "22.90" in text and "SPICE unavailable" in text
    uris = re.findall(r"src='(data:image/jpeg;base64,[^']+)'", text)
    assert len(uris) == 2  # before/after of the one boundary whose video exists
    assert np.abs(_decode_data_uri(uris[0]).reshape(-1, 3).mean(0) - RED).max() < 30
    assert np.abs(_decode_data_uri(uris[1]).reshape(-1, 3).mean(0) - BLUE).max() < 30
    assert "before (t=1.25s)" in text and "after (t=2.75s)" in text
    assert "red &lt;b&gt;" in text and "<b>\"" not in text  # captions are escaped
    assert "no video" in text and "no input: empty captions" in text and "(empty)" in text
    assert "100.00" in text and "0.00" in text  # per-boundary ROUGE-L: subject exact, status_after wrong
    assert "<script" not in text and "http" not in text  # self-contained


def test_report_without_references_or_videos(tmp_path):
    _, preds, _, boundaries = _inputs()
    path = write_report(tmp_path, None, preds, None, boundaries * 3, max_boundaries=2)
    text = path.read_text()
    assert "No references for this split" in text and "showing the first 2 boundaries" in text
    assert text.count("class='boundary'") == 2 and "data:image" not in text


def _chromium(args, tmp_path, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chrome-profile'}", "--enable-logging=stderr", "--v=0",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _console_errors(stderr: str):
    """Every console message (Chromium logs them as ``INFO:CONSOLE`` whatever their level); the report
    has no script, so any message (an exception, a resource that failed to load) is an error."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    # Negative control: the console check does see a script error.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    proc = _chromium(["--dump-dom", bad.as_uri()], tmp_path)
    assert _console_errors(proc.stderr), "console-error detection failed on a page with a JS error"

    proc = _chromium(["--dump-dom", report.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _console_errors(proc.stderr), _console_errors(proc.stderr)
    dom = proc.stdout
    assert '<table class="metrics">' in dom and dom.count('src="data:image/jpeg;base64,') == 2

    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1000,900", report.as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert not _console_errors(proc.stderr)
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.std() > 10  # not blank
    near = lambda c: (np.abs(px - np.array(c)).max(-1) < 40).sum()  # noqa: E731
    assert near(RED) > 2000 and near(BLUE) > 2000  # both thumbnails painted (192x144 each)
    assert near((0xEE, 0xF1, 0xF5)) > 500  # the table header background
