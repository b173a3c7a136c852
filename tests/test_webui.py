"""The local web demo (llmva_gebc.webui) in a real headless Chromium, driven by Playwright.

The app runs in this process on 127.0.0.1 with the tiny config and a tiny checkpoint made here. The
browser uploads a synthetic clip, presses Detect, then Caption, and reads the result table. Skips,
visibly, without Gradio/Playwright (``pip install 'llmva-gebc[webui]'``) or without Debian's
Chromium (``apt-get install chromium``; no browser is ever downloaded).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "train_configs" / "tiny.yaml")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_llm_dirs):
    """(Demo, the clip, its annotation entries): a tiny captioner with a checkpoint saved and reloaded."""
    pytest.importorskip("gradio", reason="the web demo needs the [webui] extra (gradio)")
    import llmva_gebc
    from llmva_gebc.config import load_config
    from llmva_gebc.data.synthetic import generate
    from llmva_gebc.models import build_model
    from llmva_gebc.models.checkpoint import save_trainable
    from llmva_gebc.webui import Demo

    root = tmp_path_factory.mktemp("webui")
    generate(root / "data", num_videos=3, seed=5)
    opts = [f"model.llm.path={tiny_llm_dirs['opt']}",
            f"datasets.gebc.video_info={root / 'data' / 'annotations' / 'video_info.json'}",
            f"datasets.gebc.features_dir={root / 'features'}"]
    save_trainable(build_model(load_config(CFG, opts).model), root / "ckpt")
    cap = llmva_gebc.load(CFG, ckpt=str(root / "ckpt"), options=opts)
    ann = json.loads((root / "data" / "annotations" / "val.json").read_text())
    vid = next(iter(ann))
    return Demo(cap, [str(root / "data" / "videos" / f"{vid}.mp4")]), root / "data" / "videos" / f"{vid}.mp4", ann[vid]


def test_callbacks_without_a_browser(demo):
    app, video, entries = demo
    times, status = app.detect(None, str(video))
    assert status.startswith("Detected ") and times
    table, path, status = app.caption(str(video), None, times, "Change of Color", times)
    rows = json.loads(Path(path).read_text())
    assert [round(r["boundary"], 2) for r in rows] == [float(t) for t in times.split(",")]
    assert table.count('<tr class="boundary">') == len(rows) and table.count("<img ") == 2 * len(rows)
    assert all(r["label"] == "Change of Color" and r["boundary_source"] == "auto" for r in rows)
    assert rows == [dict(r, boundary_source="auto", label_source="user")
                    for r in app.cap.caption(str(video), [r["boundary"] for r in rows], labels=["Change of Color"])]
    from llmva_gebc.api import CaptionError

    with pytest.raises(CaptionError, match="'x' is not a number"):
        app.caption(str(video), None, "1.0, x", "Multiple", "")


def test_browser_upload_detect_caption(demo, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): browser test skipped")
    pw = pytest.importorskip("playwright.sync_api", reason="the browser test needs the [webui] extra (playwright)")
    from llmva_gebc.webui import launch

    app, video, entries = demo
    port = _free_port()
    blocks = launch(app.build(), "127.0.0.1", port, block=False)
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#video-upload input[type=file]").set_input_files(str(video))
            page.wait_for_function("() => document.querySelector('#video-upload').innerText.includes('.mp4')")
            page.click("#detect")
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Detected')")
            box = page.locator("#boundaries textarea")
            times = [float(t) for t in box.input_value().split(",")]
            assert times and all(0 < t < 10 for t in times)
            page.click("#caption")
            page.wait_for_selector("#gebc-results tr.boundary")
            rows = page.locator("#gebc-results tr.boundary")
            assert rows.count() == len(times)
            first = rows.nth(0).locator("td").all_inner_texts()
            assert float(first[0]) == times[0] and first[1] == "Change of Action"
            assert rows.nth(0).locator("img").count() == 2
            # the captions in the page are the API's for the same boundaries (control characters that
            # an untrained LM emits are shown escaped)
            from llmva_gebc.caption import printable

            api = app.cap.caption(str(video), times, labels=["Change of Action"])
            assert [t.strip() for t in first[4:7]] == [printable(api[0][k]).strip()
                                                      for k in ("subject", "status_before", "status_after")]
            link = page.locator("#download a").first
            link.wait_for()
            assert "_boundaries.json" in (link.get_attribute("href") or "") + link.inner_text()
            browser.close()
    finally:
        blocks.close()
