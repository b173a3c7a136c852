"""Smoke test of the benchmark (``benchmarks/run.py --quick``) and unit checks of its FLOP formulas."""
from __future__ import annotations

import dataclasses
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
    assert {(r["backend"], r["workload"]) for r in res["gen"]} == {(b, w) for b in ("hf", "own")
                                                                   for w in ("forced", "realistic")}
    assert "### Caption decoder" in text
    dec = report.decoder_pairs(res)
    assert len(dec) == 6 and all(d["same"] for d in dec)  # own decoder: shared prefix = unshared captions
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


def test_full_size_llm_is_built_on_the_device_with_the_exact_shapes():
    """--sizes full: the released shapes; built on meta then materialised (here on CPU, reduced depth),
    initialised, and LLaMA's rotary buffers equal those of a normally built model."""
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks import workload

    assert workload.FULL == ["opt-2.7b", "opt-6.7b", "opt-13b", "vicuna-13b"]
    cfg13, _ = workload.llm_config(workload.FULL_LLMS["opt-13b"])
    assert (cfg13.hidden_size, cfg13.num_hidden_layers, cfg13.ffn_dim, cfg13.vocab_size) == (5120, 40, 20480, 50272)
    spec = dict(arch="llama", hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
                vocab_size=600)
    cfg, _ = workload.llm_config(spec, layers=2)
    model = workload.build_llm_on_device(cfg, "cpu", torch.bfloat16)
    assert model.config.num_hidden_layers == 2
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    ref = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    for (n, b), (_, rb) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.equal(b, rb), n
    w = model.model.layers[0].mlp.up_proj.weight.float()
    assert abs(w.std().item() - 0.02) < 0.002 and torch.isfinite(w).all()
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    out = model(input_ids=torch.tensor([[1, 5, 9]])).logits
    assert out.shape == (1, 3, 600) and torch.isfinite(out).all()


def test_full_rows_smoke_on_cpu(monkeypatch):
    """The full-size row code (training off/on, generation, MFU, recipe hours) on a small stand-in shape."""
    import torch

    from benchmarks import full, run, workload

    spec = dict(arch="opt", hidden_size=64, num_hidden_layers=3, num_attention_heads=4, ffn_dim=128, vocab_size=600)
    monkeypatch.setitem(workload.SIZES, "opt-test", workload.Size("opt-test", workload.FULL_ADAPTER, num_frames=12,
                                                                  gen_batch=3, llm=spec, full=True))
    args = run.argparse.Namespace(quick=False, threads=1)
    ctx = run.Ctx(args, "cpu", run.Plan(False, "cpu"))
    ctx.info = {"bf16_native": False}
    rows = full.full_rows(ctx, "opt-test")
    assert [(r["kind"], r["share_prefix"]) for r in rows] == [
        ("train", False), ("train", True), ("generate (4 new tokens)", False), ("generate (4 new tokens)", True)]
    for r in rows:
        assert r["layers"] == "1 of 3" and r["reduced"] and r["precision"] == "fp32"
        assert r["items_per_s"] > 0 and r["achieved_tflops"] > 0 and 0 < r["mfu"]
    tr = [r for r in rows if r["kind"] == "train"]
    assert all(r["recipe_h"] > 0 and r["batch"] == 3 for r in tr)
    assert rows[-1]["same_captions"] is True
    assert tr[0]["loss"] == pytest.approx(tr[1]["loss"], rel=1e-3)  # shared prefix: same loss (after 1 step each)
    text = "\n".join(report._full_md({"full": rows, "info": {"device": "cpu"}}))
    assert "reduced depth" in text and "opt-test" in text and "(est.)" in text
    assert torch.get_num_threads() >= 1


def test_train_flops_hand_count_per_mode():
    """Unshared: logits from the first caption-predicting position; packed: one row per boundary."""
    s = flops.LLMShape(hidden=8, layers=1, heads=2, kv_heads=2, ffn=16, vocab=10, gated_mlp=False)
    tok = flops.Tokens(batch=3, groups=1, full_len=[50, 51, 52], cap_len=[6, 6, 6], prefix_len=[46], tail_len=[4, 5, 6])
    # Unshared: rows padded to L = 58; logits from position min(full) - 1 = 49 on: 9 per row.
    assert flops.train_step(s, tok, 0.0, False) == 2 * flops.llm_forward(s, 3, 58, 58, 9)
    # Packed: 46 + (4+6) + (5+6) + (6+6) = 79 tokens in one row; logits from the prefix on: 33.
    assert flops.train_step(s, tok, 0.0, True) == 2 * flops.llm_forward(s, 1, 79, 79, 33)
    assert flops.train_step(s, tok, 0.0, True, mode="cache") == 2 * (
        flops.llm_forward(s, 1, 46, 46, 1) + flops.llm_forward(s, 3, 12, 58, 12))
    with pytest.raises(ValueError, match="packed"):
        flops.train_step(s, tok, 0.0, True, mode="other")


@pytest.mark.parametrize("share", [False, True])
def test_flop_model_counts_the_lm_head_rows_the_model_runs(tmp_path, share):
    """The FLOP model's LM-head positions and LLM token rows equal what the tiny model executes."""
    import torch

    from benchmarks import workload

    spec = workload.SIZES["tiny"]
    cfg = workload.load_cfg(spec, workload.make_llm(spec, tmp_path))
    model = workload.build(cfg, "cpu")
    batch = workload.make_batch(cfg, spec, 6)
    seen = {"head": 0, "tokens": 0}
    head = model.llm.get_output_embeddings()
    h1 = head.register_forward_hook(lambda m, i, o: seen.__setitem__("head", seen["head"] + i[0].shape[0] * i[0].shape[1]))

    def count_tokens(m, i, o):
        h = o[0] if isinstance(o, tuple) else o  # (rows, tokens, D)
        seen["tokens"] += h.shape[0] * h.shape[1]

    h2 = model.llm.model.decoder.layers[0].register_forward_hook(count_tokens)
    try:
        with torch.no_grad():
            model(batch, share_prefix=share)
    finally:
        for h in (h1, h2):
            h.remove()
    tok = workload.token_layout(model, batch)
    s = flops.LLMShape.from_config(model.llm.config)
    no_head = dataclasses.replace(s, vocab=0)
    # LM-head FLOPs = 2·positions·D·V: recover the positions the formula counts.
    counted = (flops.train_step(s, tok, 0.0, share) - flops.train_step(no_head, tok, 0.0, share)) / (2 * 2 * s.hidden * s.vocab)
    assert counted == seen["head"]
    assert model.share_prefix_mode == "packed"
    if share:
        R = max(p + sum(tok.tail_len[i] + tok.cap_len[i] for i in m) for p, m in zip(tok.prefix_len, tok.group_members))
        assert seen["tokens"] == tok.groups * R
    else:
        assert seen["tokens"] == tok.batch * max(p + c for p, c in zip(tok.full_len, tok.cap_len))
