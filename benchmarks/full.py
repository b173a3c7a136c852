"""Full-size rows (``benchmarks/run.py --sizes full``): the recipe's adapter and random LLMs with the exact
shapes of OPT-2.7B/6.7B/13B and Vicuna-13B (``workload.FULL_LLMS``), built on the meta device and materialised
on the target device in bf16 (fp32 on a CPU without native bf16).

Per LLM: training at batch 16 with the shared prefix off, on with the dense 4-D mask, and on with the
flex_attention block mask (GPU; flex has no CPU backward); generation with 4 beams, shared prefix off/on.
Each row: samples/s, peak memory, achieved TFLOP/s from the analytic FLOPs (``flops.py``), MFU = achieved /
the card's dense bf16 peak (``KNOWN_BF16_TFLOPS``, else the measured matmul), and the projected wall time of
the recipe (5 epochs × 79,878 train samples) at that rate. On a CPU: the same widths at
``Plan.FULL_CPU_LAYERS`` layer(s), a batch of one boundary (3 samples), the rate of the reduced model, and
the recipe projected with the FULL-depth FLOPs at the achieved FLOP/s — all labelled so in the table.
"""
from __future__ import annotations

import dataclasses
import gc
import time
from typing import Any, Dict, List, Optional, Tuple

import torch

from benchmarks import flops, harness, workload

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from the vendor datasheets, matched against
# torch.cuda.get_device_name() in this order (first substring that matches).
KNOWN_BF16_TFLOPS: List[Tuple[str, float]] = [
    ("GH200", 989.4), ("H200", 989.4), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.4), ("H800", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L4", 121.0), ("RTX 4090", 165.2),
]
MIB = 1024 ** 2


def card_peak(ctx) -> Tuple[float, str]:
    """(FLOP/s, source) the MFU divides by: the card's datasheet bf16 peak, else the measured matmul limit."""
    if ctx.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, tf in KNOWN_BF16_TFLOPS:
            if key.lower() in name.lower():
                return tf * 1e12, f"{key} datasheet, dense bf16 {tf:g} TFLOP/s"
        return ctx.peak_for("bf16"), "measured bf16 matmul (card not in the table)"
    dt = "bf16" if ctx.info["bf16_native"] else "fp32"
    return ctx.peak_for(dt), f"measured {dt} matmul ({ctx.threads} thread(s))"


def _precision(ctx) -> Tuple[str, torch.dtype]:
    if ctx.device.startswith("cuda") or ctx.info["bf16_native"]:
        return "bf16", torch.bfloat16
    return "fp32", torch.float32  # emulated bf16 on this CPU would measure the emulation, not the shapes


def _rates(row: Dict[str, Any], f_batch: float, f_full_batch: float, items: int, secs: float, peak: float,
           recipe: bool) -> None:
    achieved = f_batch / secs
    row["gflop_per_item"] = f_batch / items / 1e9
    row["achieved_tflops"] = achieved / 1e12
    row["mfu"] = achieved / peak
    row["predicted_flops_batch"] = f_batch
    if recipe:  # 5 epochs over the train split at this FLOP rate, with the full-depth model's FLOPs
        per_sample_full = f_full_batch / items
        row["recipe_h"] = workload.RECIPE_EPOCHS * workload.TRAIN_SPLIT_SAMPLES * per_sample_full / achieved / 3600


def full_rows(ctx, name: str) -> List[Dict[str, Any]]:
    from llmva_gebc.engine.optim import build_optimizer

    plan, dev = ctx.plan, ctx.device
    spec = workload.SIZES[name]
    prec, dtype = _precision(ctx)
    layers = plan.full_layers()
    t0 = time.perf_counter()
    model, cfg = workload.build_full(spec, dev, dtype, layers)
    harness.sync(dev)
    build_s = time.perf_counter() - t0
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    shape = flops.LLMShape.from_config(model.llm.config)
    full_shape = dataclasses.replace(shape, layers=spec.llm["num_hidden_layers"])
    adapter_fwd = flops.adapter_forward(cfg.model.adapter, spec.num_frames, cfg.model.encoder.num_query_tokens,
                                        shape.hidden, other_steps=workload.FULL_OTHER_STEPS)
    peak, peak_src = card_peak(ctx)
    depth = f"{shape.layers} of {full_shape.layers}"
    base = {"llm": name, "layers": depth, "precision": prec, "build_s": build_s, "weights_mib": weights_mib,
            "peak_source": peak_src, "reduced": shape.layers != full_shape.layers}
    ctx.say(f"built {name} ({depth} layers, {prec}) in {build_s:.1f} s, weights {weights_mib:,.0f} MiB")
    rows: List[Dict[str, Any]] = []
    timing = plan.full_timing()

    # Training: shared prefix off / on (dense mask) / on (flex block mask, where it can train).
    B = plan.full_batch()
    batch = workload.make_batch(cfg, spec, B)
    batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    model.train()
    opt = build_optimizer(model.trainable_parameters(), lr=1e-6, weight_decay=0.001, betas=(0.9, 0.999))
    variants: List[Tuple[bool, Optional[str]]] = [(False, None), (True, "dense")]
    if dev.startswith("cuda"):
        variants.append((True, "flex"))
    losses: Dict[Any, float] = {}

    def make_step(share: bool, kernel: Optional[str]):
        def step():
            if kernel is not None:
                model.packed_attention = kernel
            with harness.autocast(dev, prec):
                loss = model(batch, share_prefix=share)["loss"]  # scalar
            loss.backward()
            losses[(share, kernel)] = float(loss.detach())
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    timings = harness.measure_many([make_step(*v) for v in variants], dev, **timing)
    tok = workload.token_layout(model, batch)
    for (share, kernel), t in zip(variants, timings):
        row = dict(base, kind="train", batch=B, beams=None, share_prefix=share, attention=kernel or "–",
                   items_per_s=B / t.median, call_s=t.median, runs=t.runs,
                   peak_mem_mib=None if t.peak_mem is None else t.peak_mem / MIB, loss=losses.get((share, kernel)))
        mode = model.share_prefix_mode
        _rates(row, flops.train_step(shape, tok, adapter_fwd, share, mode=mode),
               flops.train_step(full_shape, tok, adapter_fwd, share, mode=mode),
               B, t.median, peak, recipe=True)
        ctx.say(f"full train {name} B={B} share={share!s:5s} {kernel or '':5s} {row['items_per_s']:8.2f} samples/s "
                f"MFU {100 * row['mfu']:.1f} % recipe {row['recipe_h']:.2f} h")
        rows.append(row)
    del opt

    # Generation: 4 beams, shared prefix off / on.
    model.eval()
    Bg, n_new = plan.full_gen_batch(), plan.full_new_tokens()
    gbatch = workload.make_batch(cfg, spec, Bg, seed=1, with_caption=False)
    gbatch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in gbatch.items()}
    out: Dict[bool, List[str]] = {}

    def make_call(share: bool):
        def call():
            with harness.autocast(dev, prec):
                out[share] = model.generate(gbatch, num_beams=4, max_new_tokens=n_new, min_length=n_new + 1,
                                            share_prefix=share)
        return call

    gt = harness.measure_many([make_call(False), make_call(True)], dev, **timing)
    gtok = workload.token_layout(model, gbatch, with_caption=False)
    # The project's decoder runs each prompt once per sample (beams fork its KV cache); only the
    # Hugging Face backend expands the inputs by the beam width first.
    hf_backend = str(cfg.model.generation.get("backend", "own")) == "hf"
    for share, t in zip((False, True), gt):
        row = dict(base, kind=f"generate ({n_new} new tokens)", batch=Bg, beams=4, share_prefix=share, attention="–",
                   items_per_s=Bg / t.median, call_s=t.median, runs=t.runs,
                   peak_mem_mib=None if t.peak_mem is None else t.peak_mem / MIB, loss=None)
        _rates(row, flops.generate_call(shape, gtok, adapter_fwd, 4, n_new, share, expand_first=hf_backend),
               flops.generate_call(full_shape, gtok, adapter_fwd, 4, n_new, share, expand_first=hf_backend),
               Bg, t.median, peak, recipe=False)
        ctx.say(f"full gen   {name} B={Bg} beams=4 share={share!s:5s} {row['items_per_s']:8.2f} captions/s "
                f"MFU {100 * row['mfu']:.1f} %")
        rows.append(row)
    rows[-1]["same_captions"] = out.get(False) == out.get(True)
    del model, batch, gbatch
    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def full_extract_row(ctx, frames: int = 64) -> Dict[str, Any]:
    """Frames/s of the FULL EVA-ViT-g/14 + Q-Former (39 layers, random weights made on the device) in bf16."""
    from omegaconf import OmegaConf

    from llmva_gebc.config import EncoderConfig
    from llmva_gebc.models.encoder import FrozenImageEncoder, _qformer_config, _vision_config

    dev = ctx.device
    ecfg = OmegaConf.structured(EncoderConfig)
    with torch.device("meta"):
        enc = FrozenImageEncoder(_vision_config(ecfg.vision), _qformer_config(ecfg.qformer, ecfg.vision.hidden_size),
                                 ecfg.num_query_tokens)
    enc.to_empty(device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            p.normal_(0.0, 0.02, generator=g) if p.ndim >= 2 else (p.zero_() if n.endswith("bias") else p.fill_(1.0))
    enc.set_precision(torch.bfloat16)
    x = torch.randn(frames, 3, 224, 224, device=dev)
    t = harness.measure(lambda: enc(x), dev, warmup=1, reps=5, max_s=20.0, min_reps=2)
    peak, src = card_peak(ctx)
    f = flops.encoder_forward(ecfg) * frames
    row = {"frames_per_call": frames, "precision": "bf16 ViT, fp32 Q-Former", "frames_per_s": frames / t.median,
           "runs": t.runs, "peak_mem_mib": None if t.peak_mem is None else t.peak_mem / MIB,
           "gflop_per_frame": f / frames / 1e9, "achieved_tflops": f / t.median / 1e12, "mfu": f / t.median / peak,
           "peak_source": src}
    ctx.say(f"full extract {row['frames_per_s']:.1f} frames/s (MFU {100 * row['mfu']:.1f} %)")
    del enc
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def cols():
    return [("LLM", "llm"), ("layers", "layers"), ("what", "kind"), ("precision", "precision"), ("batch", "batch"),
            ("share prefix", "share_prefix"), ("attention", "attention"), ("samples or captions/s", "items_per_s"),
            ("call s", "call_s"), ("runs", lambda r: f"{r['runs']}"), ("peak mem MiB", "peak_mem_mib"),
            ("weights MiB", "weights_mib"), ("GFLOP/item", "gflop_per_item"), ("achieved TFLOP/s", "achieved_tflops"),
            ("MFU", lambda r: f"{100 * r['mfu']:.1f} %"),
            ("recipe h (5 epochs)", lambda r: None if r.get("recipe_h") is None else
             (f"{r['recipe_h']:.2f}" + (" (est.)" if r["reduced"] else "")))]
