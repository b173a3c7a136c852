"""ESTIMATED GPU hours and memory of the full recipe (gebc_opt13b.yaml and its OPT-2.7B/6.7B variants).

    python benchmarks/recipe_estimate.py [--gpu-tflops 312] [--gpu-tbps 2.0] [--mfu 0.35] [--markdown]

Nothing here is measured on a GPU: FLOPs are the analytic matmul counts of ``benchmarks/flops.py`` (the
same formulas as ``results.md``) for the recipe's shapes, turned into time with a documented peak
(default: A100 dense fp16/bf16 312 TFLOP/s, HBM 2.0 TB/s) and an assumed model FLOP utilisation
(``--mfu``, default 0.35 for training and prefill; a GPU run of ``benchmarks/run.py --sizes full``
measures the real one for these shapes: pass it here). Decoding is memory-bound, so each decode step is
charged ``max(FLOPs / (peak · mfu), bytes of the frozen weights / bandwidth)``. Memory per GPU =
frozen fp16 weights + the adapter's fp32 weights, gradients and AdamW moments + activations kept for
the backward through the frozen LLM (``34·s·b·D + 5·heads·s²·b`` bytes per layer, Korthikanti et al.
2022, fp16) at the recipe's batch 16 per GPU. Workload sizes: the Kinetics-GEBC train split (26,626
boundaries × 3 captions × 5 epochs), val generation each epoch (6,751 × 3 captions), test once (6,619
× 3); 12 frames per video for the image path (12,434 videos); token lengths from the real annotations
(captions ≈ 7 words ≈ 10 OPT tokens with EOS, 95th percentile ≈ 20; prompts ≈ 13 tokens).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.flops import LLMShape, Tokens, encoder_forward, generate_call, adapter_forward, train_step  # noqa: E402
from benchmarks.workload import FULL_LLMS, RECIPE_EPOCHS, TRAIN_SPLIT_SAMPLES  # noqa: E402


def _opt(name: str) -> LLMShape:
    c = FULL_LLMS[name]  # the released checkpoints' shapes, as the full-size benchmark rows build them
    return LLMShape(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_attention_heads"],
                    c["ffn_dim"], c["vocab_size"], False)


# OPT shapes and beams (the recipe configs: 2 beams for 2.7B, 4 for 6.7B/13B).
OPT = {"OPT-2.7B": (_opt("opt-2.7b"), 2), "OPT-6.7B": (_opt("opt-6.7b"), 4), "OPT-13B": (_opt("opt-13b"), 4)}
ADAPTER = NS(hidden_size=768, intermediate_size=3072, num_layers=2, num_query_tokens=32, other_num_query_tokens=8,
             other_feats=[NS(dim=768), NS(dim=1536), NS(dim=768)])
ADAPTER_PARAMS = 45.4e6  # README "What the model computes" (with the other-feature branch)
EVA_BLIP2 = NS(vision=NS(image_size=224, patch_size=14, hidden_size=1408, num_hidden_layers=39, intermediate_size=6144),
               qformer=NS(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, cross_attention_frequency=2),
               num_query_tokens=32)
T, Q, S = 12, 32, 96  # frames, queries per frame, other-feature steps
VAL_B, TEST_B, VIDEOS = 6_751, 6_619, 12_434
EPOCHS, BATCH = RECIPE_EPOCHS, 16
PROMPT, CAP_MEAN, CAP_P95, NEW_TOKENS = 13, 10, 20, 12  # tokens
VIS = 40


def llm_params(s: LLMShape) -> float:
    return s.layers * (4 * s.hidden ** 2 + 2 * s.hidden * s.ffn) + (s.vocab + 2050) * s.hidden


def vit_l14_clip_forward() -> float:
    """CLIP ViT-L/14 at 224 px per frame (for ``other_feats.clip``): 24 layers, width 1024, 257 tokens."""
    N, W, F = 257, 1024, 4096
    return 2 * 256 * 3 * 14 * 14 * W + 24 * (8 * N * W * W + 4 * N * N * W + 4 * N * W * F) + 2 * W * 768


def batch_tokens(batch: int) -> Tokens:
    full = 1 + 2 + VIS + PROMPT  # BOS + "Video:" + visual + prompt
    caps = [CAP_P95] + [CAP_MEAN] * (batch - 1)  # one long caption per batch sets the padded length
    return Tokens(batch=batch, groups=batch // 3 or 1, full_len=[full] * batch, cap_len=caps,
                  prefix_len=[full - 4] * (batch // 3 or 1), tail_len=[4] * batch)


def estimate(name: str, peak: float, bw: float, mfu: float) -> Dict[str, float]:
    s, beams = OPT[name]
    eff = peak * mfu
    weights = 2 * llm_params(s)  # fp16 bytes
    adapter = adapter_forward(ADAPTER, T, Q, s.hidden, other_steps=S)
    train_flops = train_step(s, batch_tokens(BATCH), adapter, shared=False)
    steps = EPOCHS * TRAIN_SPLIT_SAMPLES / BATCH
    train_h = steps * train_flops / eff / 3600
    # generation: prefill at mfu, then each decode step bounded by reading the weights
    tok = batch_tokens(BATCH)
    gen_flops = generate_call(s, tok, adapter, beams, NEW_TOKENS, shared=False)
    decode_steps = NEW_TOKENS - 1
    gen_call_s = max(gen_flops / eff, decode_steps * weights / bw + 0.0)
    gen_h = (EPOCHS * VAL_B + TEST_B) * 3 / BATCH * gen_call_s / 3600
    L = max(tok.full_len) + CAP_P95
    act = s.layers * (34 * L * BATCH * s.hidden + 5 * s.heads * L * L * BATCH)
    mem = weights + 16 * ADAPTER_PARAMS + act
    return {"params_b": llm_params(s) / 1e9, "train_tflop_per_step": train_flops / 1e12, "train_steps": steps,
            "train_gpu_h": train_h, "gen_gpu_h": gen_h, "mem_gb": mem / 1e9, "weights_gb": weights / 1e9}


def extraction(peak: float, mfu: float) -> Dict[str, float]:
    eva = encoder_forward(EVA_BLIP2) * T * VIDEOS
    clip = vit_l14_clip_forward() * 150 * VIDEOS  # 15 fps (the original's rate) over ~10 s clips
    return {"eva_blip2_gpu_h": eva / (peak * mfu) / 3600, "clip_gpu_h": clip / (peak * mfu) / 3600,
            "eva_tflop_per_frame": encoder_forward(EVA_BLIP2) / 1e12}


def table(peak: float, bw: float, mfu: float) -> List[str]:
    ex = extraction(peak, mfu)
    rows = [f"ESTIMATES (analytic FLOPs, {peak / 1e12:.0f} TFLOP/s peak at {mfu:.0%} utilisation, {bw / 1e12:.1f} TB/s; "
            "not measured)", "",
            "| LLM | params | frozen weights fp16 | memory / GPU at batch 16 | train FLOPs / step | train steps | "
            "train GPU-h | val+test generation GPU-h | total GPU-h (+ extraction) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in OPT:
        e = estimate(name, peak, bw, mfu)
        total = e["train_gpu_h"] + e["gen_gpu_h"] + ex["eva_blip2_gpu_h"] + ex["clip_gpu_h"]
        rows.append(f"| {name} | {e['params_b']:.1f} B | {e['weights_gb']:.0f} GB | ~{e['mem_gb']:.0f} GB | "
                    f"{e['train_tflop_per_step']:.1f} TFLOP | {e['train_steps']:,.0f} | {e['train_gpu_h']:.1f} | "
                    f"{e['gen_gpu_h']:.1f} | {total:.1f} |")
    rows += ["", f"Feature extraction (once, any LLM): EVA-ViT-g + BLIP-2 Q-Former {ex['eva_tflop_per_frame']:.2f} TFLOP/frame "
             f"× 12 frames × {VIDEOS:,} videos ≈ {ex['eva_blip2_gpu_h']:.1f} GPU-h; CLIP ViT-L/14 at 15 fps ≈ "
             f"{ex['clip_gpu_h']:.2f} GPU-h (plus video decoding, usually the real bottleneck: CPU-bound). "
             "InternVideo and Omnivore features are made with their own projects' code: not counted."]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-tflops", type=float, default=312.0, help="dense fp16 peak (A100: 312; H100 SXM: 989)")
    ap.add_argument("--gpu-tbps", type=float, default=2.0, help="memory bandwidth, TB/s (A100 80GB: 2.0; H100: 3.35)")
    ap.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOP utilisation (0-1)")
    a = ap.parse_args(argv)
    print("\n".join(table(a.gpu_tflops * 1e12, a.gpu_tbps * 1e12, a.mfu)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
