"""Smoke test of the benchmark (``benchmarks/run.py --quick``) and unit checks of its FLOP formulas."""
from __future__ import annotations

import json
import logging

import pytest

from benchmarks import flops, report
from tests.conftest import SHARED_DATA


def test_llm_flops_match_a_hand_count():
    """One OPT layer, 3 tokens over 5 keys, logits on 2 positions, counted by hand."""
    s = flops.LLMShape(hidden=8, layers=1, heads=2, kv_heads=2, ffn=16, vocab=10, gated_mlp=False)
    qkv, o = 2 * 3 * 8 * 24, 2 * 3 * 8 * 8
    attn = 2 * 3 * 5 * 8 * 2
    ffn = 2 * (2 * 3 * 8 * 16)
    head = 2 * 2 * 8 * 10
    assert flops.llm_forward(s, rows=1, n=3, ctx=5, logits=2) == qkv + o + attn + ffn + head
    assert flops.llm_forward(s, rows=4, n=3, ctx=5, logits=2) == 4 * (qkv + o + attn + ffn + head)


def test_shared_prefix_predicts_fewer_flops_for_three_types_of_a_boundary():
    s = flops.LLMShape(hidden=64, layers=2, heads=4, kv_heads=4, ffn=256, vocab=600, gated_mlp=False)
    tok = flops.Tokens(batch=3, groups=1, full_len=[50, 51, 52], cap_len=[6, 6, 6], prefix_len=[46], tail_len=[4, 5, 6])
    assert tok.unshared_tokens == 3 * 58 and tok.shared_tokens == 46 + 3 * 12
    unshared = flops.train_step(s, tok, adapter_fwd=1e6, shared=False)
    shared = flops.train_step(s, tok, adapter_fwd=1e6, shared=True)
    assert 0 < shared < unshared
    g1 = flops.generate_call(s, tok, 1e6, beams=4, new_tokens=20, shared=False)
    g2 = flops.generate_call(s, tok, 1e6, beams=4, new_tokens=20, shared=True)
    assert 0 < g2 < g1


def test_sections_are_replaced_per_device(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# old\n<!-- bench-section:cuda-x -->\nGPU TEXT\n<!-- /bench-section:cuda-x -->\n"
                  "<!-- bench-section:cpu -->\nOLD CPU\n<!-- /bench-section:cpu -->\n")
    secs = report._sections(md.read_text())
    assert secs == {"cuda-x": "GPU TEXT\n", "cpu": "OLD CPU\n"}


def test_quick_benchmark_writes_table_plot_and_positive_flops(tmp_path):
    from benchmarks.run import main

    out = tmp_path / "bench" / "results.md"
    # A GPU section from an earlier run must survive a CPU rerun.
    out.parent.mkdir()
    out.write_text("<!-- bench-section:cuda-test-card -->\n## GPU: test card\n<!-- /bench-section:cuda-test-card -->\n")
    levels = {n: logging.getLogger(n).level for n in ("transformers", "llmva_gebc")}
    try:
        res = main(["--quick", "--device", "cpu", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    finally:  # main() quiets these loggers for its own table; later tests need their warnings
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)
    text = out.read_text()
    assert "## CPU:" in text and "(quick mode)" in text
    assert "## GPU: test card" in text  # the other device's section is kept
    assert "achieved GFLOP/s" in text and "of matmul peak" in text
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data) == {"cpu"}
    # Every measured row: positive throughput, FLOPs and FLOP/s, and a ratio to the measured matmul limit.
    assert {r["batch"] for r in res["train"] if r["path"] == "cached features"} == {1, 4}
    assert {r["beams"] for r in res["gen"]} == {1, 2, 4}
    for r in res["train"] + res["gen"] + res["extract"]:
        assert r["gflop_per_item"] > 0 and r["achieved_gflops"] > 0 and 0 < r["peak_ratio"], r
        assert r["runs"] == 1
    assert all(m["flops"] > 0 for m in res["matmul"])
    assert {r["precision"] for r in res["train"]} >= {"fp32", "bf16"}
    assert any(r["path"] == "raw video" for r in res["train"])
    prof = res["profile"][0]
    assert prof["llm_params_with_grad"] == 0 and prof["llm_params_requiring_grad"] == 0
    assert prof["tok_calls_fixed_per_step"] == 0
    if (SHARED_DATA / "valset_highest_f1.json").is_file():
        assert res["score"]["boundaries"] == 50 and res["score"]["seconds"] > 0
        assert res["score"]["ROUGE_L"] == pytest.approx(100.0)  # references scored against themselves
    else:  # the run says so in the file instead
        assert res["score"] is None and "scoring skipped" in text
