"""Benchmark: training/generation throughput, memory, extraction, scoring, and the FLOP/s limit.

    python benchmarks/run.py --out benchmarks/results.md [--quick] [--sizes tiny,base] [--device auto|cpu|cuda]

Writes ``results.md`` (markdown tables; one section per device, a rerun replaces only its own
device's section), ``results.json`` (the raw numbers, per device) and ``results.png`` (the plot, all
devices in the JSON), next to ``--out``; prints the section. Every figure is the median of timed runs
after a warm-up run (``runs`` column: how many). See ``benchmarks/flops.py`` for the FLOP formulas,
``benchmarks/workload.py`` for the sizes and batches, ``benchmarks/harness.py`` for timing/memory.

``--quick``: tiny size only, batch sizes 1 and 4, one timed run per row, scoring on a 50-boundary
subset (the smoke test, a few seconds). The shared-prefix switch is one parameter: the ``shares``
values of :func:`train_rows` / :func:`gen_rows` (rows for on/off appear when ``model.forward`` accepts
``share_prefix``), measured interleaved so both see the same machine load.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import inspect
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import flops, full, harness, report, workload  # noqa: E402

log = logging.getLogger("benchmarks")
MIB = 1024 ** 2
GEN_NEW_TOKENS = 20
DEFAULT_VAL = REPO.parent / "shared" / "data" / "kinetics_gebc" / "valset_highest_f1.json"


# ------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_info(device: str) -> Dict[str, Any]:
    import transformers

    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "device": device, "bf16_native": native_bf16(device),
        "load_avg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 1024 ** 3, 1)
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------------------------ plan
class Plan:
    """How much to measure: batch sizes, repetitions, per-row time caps."""

    def __init__(self, quick: bool, device: str) -> None:
        self.quick = quick
        self.gpu = device.startswith("cuda")
        self.batches = [1, 4] if quick else [1, 4, 16]
        self.beams = [1, 2, 4]
        self.min_reps = 1 if quick else 2  # timed runs per row at least (but see warmup())

    def reps(self, size: str) -> int:
        if self.quick:
            return 1
        return 5 if self.gpu else 3

    def max_s(self, size: str) -> float:
        """Cap on a row's timed runs (seconds): base rows on a CPU get fewer runs when a run is slow."""
        if self.quick:
            return 2.0
        return 4.0 if (size == "tiny" or self.gpu) else 12.0

    def train_precisions(self, size: str, bf16_native: bool, batch: int) -> List[str]:
        # Without native bf16 (AVX2-only CPUs) bf16 autocast is emulated and ~10x slower than fp32:
        # measured for the tiny size and for the base size at batch 1 only, to keep the run short.
        if bf16_native or size == "tiny" or batch == 1:
            return ["fp32", "bf16"]
        return ["fp32"]

    def warmup(self, size: str, precision: str, bf16_native: bool) -> int:
        """Warm-up runs before the timed ones. Emulated bf16 at the base size costs ~a minute per step on
        a CPU: it gets no warm-up (the first step's extra costs are small next to that)."""
        if precision == "bf16" and not bf16_native and size != "tiny" and not self.quick:
            return 0
        return 1

    def share_batches(self, size: str) -> List[int]:
        if self.quick:
            return [4]
        return [4, 16]

    def raw_batches(self, size: str) -> List[int]:
        if self.quick or size == "tiny":
            return [1, 4]
        return [4] if self.gpu else [1]

    def gen_beams(self, size: str, load: str) -> List[int]:
        """Beam counts of the generation rows. A base-size call costs seconds on a CPU: there both
        workloads run at 4 beams only (the recipe's setting; 1 and 2 beams are in the tiny rows), with two
        timed runs each, to keep ``make bench`` inside its 10 minutes."""
        if self.gpu or self.quick or size == "tiny":
            return list(self.beams)
        return [4]

    def gen_reps(self, size: str) -> int:
        return 2 if (size != "tiny" and not self.gpu and not self.quick) else self.reps(size)

    def gen_precisions(self) -> List[str]:
        return ["fp32", "bf16"] if self.gpu else ["fp32"]

    # Full-size LLM shapes (--sizes full): the whole model on a GPU; on a CPU the same widths at
    # FULL_CPU_LAYERS decoder layer(s), one boundary per batch, few new tokens, one run without warm-up
    # (a 13B-wide layer costs seconds per step there), all labelled in the rows.
    FULL_CPU_LAYERS = 1

    def full_layers(self) -> Optional[int]:
        return None if self.gpu else self.FULL_CPU_LAYERS

    def full_batch(self) -> int:
        return 16 if self.gpu else 3

    def full_gen_batch(self) -> int:
        return 16 if self.gpu else 3

    def full_new_tokens(self) -> int:
        return GEN_NEW_TOKENS if self.gpu else 4

    def full_timing(self) -> Dict[str, Any]:
        if self.gpu:
            return {"warmup": 2, "reps": 5, "max_s": 20.0, "min_reps": 3}
        return {"warmup": 0, "reps": 1, "max_s": None, "min_reps": 1}


def accepts_share_prefix(model) -> bool:
    return "share_prefix" in inspect.signature(model.forward).parameters


# ------------------------------------------------------------------------------------ rows
def _flop_cols(ctx, row: Dict[str, Any], flops_per_item: float, items_per_s: float, precision: str) -> None:
    """FLOPs per item, achieved FLOP/s and its ratio to the matmul limit (same dtype, same threads)."""
    achieved = flops_per_item * items_per_s
    row["threads"] = ctx.threads
    row["gflop_per_item"] = flops_per_item / 1e9
    row["achieved_gflops"] = achieved / 1e9
    # Without native bf16 the hardware's limit is its fp32 FMA rate (emulated bf16 converts to fp32).
    dtype = "bf16" if precision in ("bf16", "fp16") and ctx.info["bf16_native"] else "fp32"
    row["limit_key"] = ctx.limit_key(dtype)
    row["peak_ratio"] = achieved / ctx.peak_for(dtype)  # provisional; final_ratios() after the re-measure


def train_rows(ctx, size: str, batch_size: int, precision: str = "fp32", shares: Sequence[Optional[bool]] = (None,),
               raw_video: bool = False) -> List[Dict[str, Any]]:
    """Training samples/s: adapter forward + backward + AdamW step through the frozen LLM, one row per value
    of ``shares`` (None = the model's default call, no ``share_prefix`` argument; False/True passed as is),
    measured interleaved on the same batch."""
    from llmva_gebc.engine.optim import build_optimizer

    S = ctx.sizes[size]
    model, cfg = S["model"], S["cfg"]
    spec = workload.SIZES[size]
    batch = workload.make_batch(cfg, spec, batch_size, raw_video=raw_video)
    batch = {k: (v.to(ctx.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    model.train()
    opt = build_optimizer(model.trainable_parameters(), lr=1e-6, weight_decay=0.001, betas=(0.9, 0.999))

    def make_step(share):
        kw = {} if share is None else {"share_prefix": share}

        def step():
            with harness.autocast(ctx.device, precision):
                loss = model(batch, **kw)["loss"]  # scalar
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    warm = ctx.plan.warmup(size, precision, ctx.info["bf16_native"])
    timings = harness.measure_many([make_step(s) for s in shares], ctx.device, warmup=warm,
                                   reps=ctx.plan.reps(size) if warm else 1, max_s=ctx.plan.max_s(size),
                                   min_reps=ctx.plan.min_reps if warm else 1)
    del opt
    tok = workload.token_layout(model, batch)
    enc = flops.encoder_forward(cfg.model.encoder) * spec.num_frames if raw_video else 0.0
    rows = []
    for share, t in zip(shares, timings):
        f = flops.train_step(S["shape"], tok, S["adapter_fwd"], bool(share), encoder_fwd=enc,
                             mode=getattr(model, "share_prefix_mode", "packed"))
        sps = batch_size / t.median
        row = {"size": size, "path": "raw video" if raw_video else "cached features", "precision": precision,
               "batch": batch_size, "share_prefix": bool(share), "samples_per_s": sps, "step_s": t.median,
               "runs": t.runs, "warmup": warm, "warmup_s": t.warmup_s,
               "peak_mem_mib": None if t.peak_mem is None else t.peak_mem / MIB,
               "llm_tokens": tok.shared_tokens if share else tok.unshared_tokens,
               "predicted_flops_batch": f}
        _flop_cols(ctx, row, f / batch_size, sps, precision)
        ctx.say(f"train {size:4s} {row['path']:15s} {precision} B={batch_size:<2d} share={bool(share)!s:5s} "
                f"{sps:8.2f} samples/s  ({t.runs} runs, {row['peak_mem_mib'] or 0:.0f} MiB)")
        rows.append(row)
    return rows


WORKLOADS = ("forced", "realistic")
REALISTIC_MAX_LENGTH = 30  # the original's max_length


@contextlib.contextmanager
def eos_tilt(model, start: float = 8.0, spread: float = 4.0):
    """Make random weights end captions after ``start``–``start + spread`` tokens, as a trained model's do:
    a forward hook on the LM head sets the EOS logit of each row to the row's maximum plus
    ``2 · (step − t0)``, with ``t0`` drawn per row and step from the row's own logits (so rows end at
    different steps whatever their order in the batch). ``step`` counts decode calls since the last
    prompt call (``inputs_embeds`` of more than one position)."""
    head = model.llm.get_output_embeddings()
    step = [0]

    def count(_module, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        step[0] = 0 if emb is not None and emb.shape[1] > 1 else step[0] + 1

    def hook(_module, _inp, out):
        out = out.clone()
        z = out.float()
        z = (z[..., 5] - z.mean(-1)) / z.std(-1)  # (R, T) ~ N(0, 1), content-derived
        noise = torch.sigmoid(1.5 * z)  # smooth: float rounding cannot move an end by a step
        top = out.max(dim=-1).values  # (R, T)
        out[..., model.eos_id] = top + 2.0 * (step[0] - start - spread * noise).to(out.dtype)
        return out

    hooks = [model.llm.register_forward_pre_hook(count, with_kwargs=True), head.register_forward_hook(hook)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def gen_rows(ctx, size: str, beams: int, shares: Sequence[Optional[bool]] = (None,),
             precision: str = "fp32", backends: Sequence[str] = ("own",), load: str = "forced") -> List[Dict[str, Any]]:
    """Generation captions/s: ``model.generate`` with ``beams`` beams, one row per (backend, share) —
    ``backend`` ``own`` (the project's decoder) or ``hf`` (transformers' ``generate``, the earlier path) —
    all measured interleaved on the same batch. ``load``: ``forced`` = exactly GEN_NEW_TOKENS new tokens
    per caption (EOS forbidden until then); ``realistic`` = max_length 30 and an LM head tilted towards EOS
    (:func:`eos_tilt`) so captions end after about 8–12 tokens."""
    S = ctx.sizes[size]
    model, cfg = S["model"], S["cfg"]
    spec = workload.SIZES[size]
    B = spec.gen_batch if not ctx.plan.quick else min(spec.gen_batch, 6)
    batch = workload.make_batch(cfg, spec, B, seed=1, with_caption=False)
    batch = {k: (v.to(ctx.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    model.eval()
    out: Dict[Any, List[str]] = {}
    if load == "forced":
        kw_len = {"max_new_tokens": GEN_NEW_TOKENS, "min_length": GEN_NEW_TOKENS + 1}
        tilt = contextlib.nullcontext()
    else:
        kw_len = {"max_length": REALISTIC_MAX_LENGTH}
        tilt = eos_tilt(model)
    combos = [(b, s) for b in backends for s in shares]

    def make_call(backend, share):
        kw = {} if share is None else {"share_prefix": share}

        def call():
            with harness.autocast(ctx.device, precision):
                out[backend, share] = model.generate(batch, num_beams=beams, backend=backend, **kw_len, **kw)
        return call

    with tilt:
        timings = harness.measure_many([make_call(*c) for c in combos], ctx.device, warmup=1,
                                       reps=ctx.plan.gen_reps(size), max_s=ctx.plan.max_s(size) * len(combos) / 2,
                                       min_reps=ctx.plan.min_reps)
    tok = workload.token_layout(model, batch, with_caption=False)
    rows = []
    for (backend, share), t in zip(combos, timings):
        caps = out[backend, share]
        lens = [len(model.tokenizer(c, add_special_tokens=False).input_ids) for c in caps]
        if model.llm.get_output_embeddings().weight.shape[0] > len(model.tokenizer):  # ids beyond the tokenizer
            lens = None  # (base: a 50k-vocab LLM with the tiny tokenizer): text lengths say nothing
        new = GEN_NEW_TOKENS if load == "forced" or not lens else max(lens) + 1  # FLOPs: decode steps of the longest
        f = flops.generate_call(S["shape"], tok, S["adapter_fwd"], beams, new, bool(share), expand_first=backend == "hf")
        cps = B / t.median
        prompt_rows = B * beams if backend == "hf" else B  # prompt rows: once per beam (hf) or per sample (own)
        row = {"size": size, "beams": beams, "precision": precision, "batch": B, "share_prefix": bool(share),
               "backend": backend, "workload": load, "caption_tokens": sum(lens) / len(lens) if lens else None,
               "captions_per_s": cps, "call_s": t.median, "runs": t.runs,
               "peak_mem_mib": None if t.peak_mem is None else t.peak_mem / MIB,
               "llm_prompt_tokens": (tok.groups * max(tok.prefix_len) + prompt_rows * max(tok.tail_len))
               if share else prompt_rows * max(tok.full_len),
               "predicted_flops_batch": f, "captions": caps}
        _flop_cols(ctx, row, f / B, cps, precision)
        ctx.say(f"gen   {size:4s} {precision} {load:9s} {backend:3s} beams={beams} B={B} share={bool(share)!s:5s} "
                f"{cps:8.2f} captions/s ({t.runs} runs, "
                + (f"{row['caption_tokens']:.1f} tokens/caption)" if row["caption_tokens"] else "tokens/caption unknown)"))
        rows.append(row)
    return rows


def extract_row(ctx, size: str, frames: int, precision: str = "fp32") -> Dict[str, Any]:
    """Feature extraction frames/s: frames (N, 3, 224, 224) → image Q-Former tokens with the frozen encoder."""
    S = ctx.sizes[size]
    enc, ecfg = S["model"].encoder, S["cfg"].model.encoder
    if precision != "fp32":
        enc.set_precision({"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(frames, 3, ecfg.vision.image_size, ecfg.vision.image_size, generator=g).to(ctx.device)
    t = harness.measure(lambda: enc(x), ctx.device, warmup=1, reps=ctx.plan.reps(size), max_s=ctx.plan.max_s(size),
                        min_reps=ctx.plan.min_reps)
    if precision != "fp32":
        enc.set_precision(torch.float32)
    fps = frames / t.median
    v = ecfg.vision
    row = {"size": size, "encoder": f"ViT {v.num_hidden_layers}×{v.hidden_size} (patch {v.patch_size}) + "
                                    f"Q-Former {ecfg.qformer.num_hidden_layers}×{ecfg.qformer.hidden_size}",
           "precision": precision, "frames_per_call": frames, "frames_per_s": fps, "call_s": t.median, "runs": t.runs}
    f = flops.encoder_forward(ecfg)
    _flop_cols(ctx, row, f, fps, precision)
    if size == "base" and v.num_hidden_layers != workload.FULL_VIT_LAYERS:
        from omegaconf import OmegaConf

        full = OmegaConf.merge(ecfg, {"vision": {"num_hidden_layers": workload.FULL_VIT_LAYERS}})
        ff = flops.encoder_forward(full)
        row["full_depth_gflop_per_frame"] = ff / 1e9
        row["full_depth_frames_per_s_est"] = row["achieved_gflops"] * 1e9 / ff
    ctx.say(f"extract {size:4s} {precision} {fps:8.2f} frames/s ({t.runs} runs)")
    return row


def score_row(ctx, val_json: Path) -> Dict[str, Any]:
    """Time to score the full val split with the references as predictions (CIDEr, ROUGE-L[, SPICE])."""
    from llmva_gebc.eval.metrics import find_spice_lib, score_captions
    from llmva_gebc.eval.submission import references_from_annotations

    refs = references_from_annotations(val_json)
    if ctx.plan.quick:
        refs = dict(list(refs.items())[:50])
    spice = bool(ctx.args.spice)
    res: Dict[str, Any] = {}

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["m"] = score_captions(refs, refs, spice=spice)

    t = harness.measure(call, "cpu", warmup=0 if ctx.plan.quick else 1, reps=1 if ctx.plan.quick else 2,
                        max_s=60.0, memory=False)
    m = res["m"]
    row = {"boundaries": len(refs), "captions": 3 * len(refs), "seconds": t.median, "runs": t.runs,
           "spice": spice, "spice_jars": find_spice_lib() is not None,
           "CIDEr": m["CIDEr"], "ROUGE_L": m["ROUGE_L"], "SPICE": m["SPICE"], "subset": ctx.plan.quick}
    ctx.say(f"score {len(refs)} boundaries: {t.median:.2f} s ({t.runs} runs)")
    return row


# ------------------------------------------------------------------------------------ profile
class CountingTokenizer:
    """Wraps a tokenizer and counts ``__call__`` per string (to see repeated tokenisation)."""

    def __init__(self, tok) -> None:
        self._tok = tok
        self.calls: Dict[str, int] = {}

    def __call__(self, text, *a, **kw):
        key = text if isinstance(text, str) else repr(text)
        self.calls[key] = self.calls.get(key, 0) + 1
        return self._tok(text, *a, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def profile_findings(ctx, size: str, batch_size: int) -> Dict[str, Any]:
    """Repeated tokenisation, the frozen LLM's mode/grad state, and what dominates a training step."""
    from torch.profiler import ProfilerActivity, profile

    from llmva_gebc.engine.optim import build_optimizer

    S = ctx.sizes[size]
    model, cfg = S["model"], S["cfg"]
    spec = workload.SIZES[size]
    batch = workload.make_batch(cfg, spec, batch_size, seed=2)
    batch = {k: (v.to(ctx.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    out: Dict[str, Any] = {"size": size, "batch": batch_size}
    model.train()
    opt = build_optimizer(model.trainable_parameters(), lr=1e-6, weight_decay=0.001, betas=(0.9, 0.999))

    def step():
        loss = model(batch)["loss"]
        loss.backward()
        return loss

    # 1. Tokenisation per step (after the first step, which fills the model's fixed-string cache).
    orig = model.tokenizer
    counting = CountingTokenizer(orig)
    model.tokenizer = counting
    try:
        step()
        opt.zero_grad(set_to_none=True)
        counting.calls.clear()
        n_steps = 1  # deterministic: the same batch tokenises the same strings every step
        for _ in range(n_steps):
            step()
    finally:
        model.tokenizer = orig
    fixed = {workload_prompt for workload_prompt in batch["prompt"]} | {"Video:"}
    out["tok_calls_fixed_per_step"] = sum(c for s, c in counting.calls.items() if s in fixed) / n_steps
    out["tok_calls_captions_per_step"] = sum(c for s, c in counting.calls.items() if s not in fixed) / n_steps
    cap = batch["caption"][0]
    tt = harness.measure(lambda: [orig(cap, add_special_tokens=False) for _ in range(50)], "cpu",
                         warmup=1, reps=3, memory=False)
    out["tok_call_us"] = tt.median / 50 * 1e6

    # 2. The frozen LLM: eval mode, no trainable parameters, no gradient buffers after backward.
    llm_params = list(model.llm.parameters())
    out["llm_training_mode"] = bool(model.llm.training)
    out["llm_modules_in_train_mode"] = sum(m.training for m in model.llm.modules())
    out["llm_params_requiring_grad"] = sum(p.requires_grad for p in llm_params)
    out["llm_params_with_grad"] = sum(p.grad is not None for p in llm_params)
    out["llm_param_mib"] = sum(p.numel() * p.element_size() for p in llm_params) / MIB
    enc = getattr(model, "encoder", None)
    if enc is not None:
        out["encoder_params_with_grad"] = sum(p.grad is not None for p in enc.parameters())
        out["encoder_training_mode"] = bool(enc.training)
    out["trainable_params_m"] = sum(p.numel() for _, p in model.trainable_parameters()) / 1e6
    out["grad_mib"] = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                          if p.grad is not None) / MIB
    opt.zero_grad(set_to_none=True)

    # 3. What dominates: torch.profiler over one step (forward + backward + optimizer), by op.
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.startswith("cuda") else [])) as prof:
        step()
        opt.step()
        opt.zero_grad(set_to_none=True)
    harness.sync(ctx.device)
    del opt
    events = prof.key_averages()
    attr = "self_device_time_total" if ctx.device.startswith("cuda") else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr, 0) or 0, e.count) for e in events]
    total = sum(r[1] for r in rows) or 1
    cats = {"matmul (mm/addmm/bmm/linear)": 0, "attention (sdpa)": 0, "softmax / cross-entropy": 0,
            "optimizer (AdamW)": 0, "other": 0}
    for key, t, _ in rows:
        k = key.lower()
        if any(s in k for s in ("::mm", "addmm", "bmm", "::matmul", "::linear", "baddbmm")):
            cats["matmul (mm/addmm/bmm/linear)"] += t
        elif "attention" in k or "sdpa" in k or "flash" in k:
            cats["attention (sdpa)"] += t
        elif "softmax" in k or "nll" in k or "cross_entropy" in k:
            cats["softmax / cross-entropy"] += t
        elif "foreach" in k or "adam" in k or "optimizer" in k.lower():
            cats["optimizer (AdamW)"] += t
        else:
            cats["other"] += t
    out["categories"] = {k: v / total for k, v in cats.items()}
    out["top_ops"] = [{"op": k, "share": t / total, "calls": c} for k, t, c in sorted(rows, key=lambda r: -r[1])[:8]]
    # LM-head work on positions without a target: unshared training keeps logits from the first position
    # that predicts a caption token on (logits_to_keep), so only padding and the longer prompts' tails.
    tok = workload.token_layout(model, batch)
    s = S["shape"]
    L = max(p + c for p, c in zip(tok.full_len, tok.cap_len))
    kept = batch_size * (L - min(tok.full_len) + 1)
    wasted = 2 * 2 * (kept - sum(tok.cap_len)) * s.hidden * s.vocab  # fwd + activation bwd
    step_flops = flops.train_step(s, tok, S["adapter_fwd"], False)
    out["lm_head_untargeted_share"] = wasted / step_flops
    # Before the fix (logits at every position), as a share of that step's FLOPs.
    everywhere = 2 * 2 * (batch_size * L - sum(tok.cap_len)) * s.hidden * s.vocab
    out["lm_head_untargeted_share_before"] = everywhere / (step_flops + everywhere - wasted)
    # What freezing avoids: LLM weight gradients would add ~one more LLM forward's FLOPs per step.
    out["llm_weight_grad_share"] = flops.llm_forward(s, batch_size, L, L, L) / step_flops
    ctx.say(f"profile {size}: fixed-string tokenizer calls/step {out['tok_calls_fixed_per_step']:.0f}, "
            f"caption calls/step {out['tok_calls_captions_per_step']:.0f}, LLM params with grad {out['llm_params_with_grad']}")
    return out


# ------------------------------------------------------------------------------------ main
class Ctx:
    def __init__(self, args, device: str, plan: Plan) -> None:
        self.args, self.device, self.plan = args, device, plan
        self.sizes: Dict[str, Dict[str, Any]] = {}
        self.matmul: Dict[str, Dict[str, Any]] = {}  # "fp32@2" -> {"n", "flops", "runs", "threads"}
        self.default_threads = self.threads = torch.get_num_threads()
        self.t0 = time.perf_counter()

    def set_threads(self, n: Optional[int]) -> None:
        if self.device.startswith("cuda"):
            return
        torch.set_num_threads(n or self.default_threads)
        self.threads = torch.get_num_threads()

    def limit_key(self, precision: str) -> str:
        return f"{precision}@{self.threads}"

    def _matmul(self, precision: str) -> tuple:
        n = 1024 if self.plan.quick else (4096 if self.plan.gpu else 2048)
        if precision == "bf16" and not native_bf16(self.device):
            n //= 4  # emulated bf16 runs at ~1 GFLOP/s: a smaller matmul reaches the same rate
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        fl, runs = harness.matmul_flops(n, dt, self.device, reps=2 if self.plan.quick else 5)
        self.say(f"matmul {n}³ {precision} ({self.threads} threads): {fl / 1e9:.1f} GFLOP/s")
        return n, fl, runs

    def peak_for(self, precision: str) -> float:
        """The matmul FLOP/s limit for ``precision`` at the current thread count: measured when first
        needed and again at the end of the run (``remeasure``); the limit is the larger median, so a
        limit measured while other processes held the cores does not inflate the ratios."""
        key = self.limit_key(precision)
        if key not in self.matmul:
            n, fl, runs = self._matmul(precision)
            self.matmul[key] = {"precision": precision, "threads": self.threads, "n": n, "runs": runs,
                                "flops_start": fl, "flops_end": None, "flops": fl}
        return self.matmul[key]["flops"]

    def remeasure(self) -> None:
        for m in self.matmul.values():
            self.set_threads(m["threads"])
            _, fl, _ = self._matmul(m["precision"])
            m["flops_end"] = fl
            m["flops"] = max(m["flops_start"], fl)

    def say(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)


def probe_threads(ctx: Ctx, size: str) -> Dict[str, Any]:
    """One thread vs all cores for ``size``: the median of 3 training steps (after a warm-up) each.

    CPU rows run with ONE torch thread unless ``--threads`` says otherwise: on a machine whose cores other
    processes share, every op's OpenMP barrier waits for a descheduled thread, so all-core timings swing
    with the neighbours' load (seen here at load average ~6 on 2 cores: a tiny training step 1.8 s with 2
    threads vs 15 ms with 1; a base generate call 28 s vs 4.5 s), and rows measured minutes apart (shared
    vs unshared) stop being comparable. One thread is slowed by the load only in proportion. This probe
    shows what all cores give at the time of the run; it does not change the rows."""
    from llmva_gebc.engine.optim import build_optimizer

    S = ctx.sizes[size]
    model, cfg = S["model"], S["cfg"]
    B = 4 if size == "tiny" else 1
    batch = workload.make_batch(cfg, workload.SIZES[size], B, seed=3)
    model.train()
    opt = build_optimizer(model.trainable_parameters(), lr=1e-6, weight_decay=0.001, betas=(0.9, 0.999))

    def step():
        model(batch)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times, mine = {}, ctx.threads
    for n in (1, ctx.default_threads):
        ctx.set_threads(n)
        times[n] = harness.measure(step, ctx.device, warmup=1, reps=3, memory=False).median
    ctx.set_threads(mine)
    ctx.say(f"threads {size}: " + ", ".join(f"{n} → {t:.3f} s/step" for n, t in times.items()))
    return {"size": size, "batch": B, "times": {str(k): v for k, v in times.items()}, "used": mine}


def setup_size(ctx: Ctx, name: str) -> None:
    spec = workload.SIZES[name]
    cache = Path(ctx.args.cache_dir)
    llm_dir = workload.make_llm(spec, cache)
    cfg = workload.load_cfg(spec, llm_dir, "model.use_encoder=true", "model.encoder.precision=fp32")
    model = workload.build(cfg, ctx.device)
    shape = flops.LLMShape.from_config(model.llm.config)
    adapter_fwd = flops.adapter_forward(cfg.model.adapter, spec.num_frames, cfg.model.encoder.num_query_tokens,
                                        shape.hidden)
    ctx.sizes[name] = {"model": model, "cfg": cfg, "shape": shape, "adapter_fwd": adapter_fwd}
    ctx.say(f"built {name}: LLM {shape.layers}×{shape.hidden} vocab {shape.vocab}, "
            f"{sum(p.numel() for _, p in model.trainable_parameters()) / 1e6:.2f} M trainable")


def run(args) -> Dict[str, Any]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    plan = Plan(args.quick, device)
    if args.only_gen:
        plan.min_reps = 1  # a remeasurement of generation rows: one timed run per row at least
    sizes = ["tiny"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    sizes = [x for s in sizes for x in (workload.FULL if s == "full" else [s])]
    unknown = [s for s in sizes if s not in workload.SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; known: {sorted(workload.SIZES)}")
    ctx = Ctx(args, device, plan)
    info = ctx.info = machine_info(device)
    res: Dict[str, Any] = {"info": info, "quick": args.quick, "sizes": sizes, "train": [], "gen": [],
                           "extract": [], "score": None, "profile": [], "notes": [], "full": [], "full_extract": None}
    ctx.say(f"device {device} ({info.get('gpu', info['cpu'])}), {info['torch_threads']} torch threads, "
            f"load average {info['load_avg_start']}")

    # The machine's matmul limit, per dtype, with all cores (more thread counts are measured as used).
    for prec in ("fp32", "bf16"):
        ctx.peak_for(prec)

    res["threads_probe"] = []
    small = [s for s in sizes if not workload.SIZES[s].full]
    for size in [s for s in sizes if workload.SIZES[s].full]:  # full-size LLM shapes: benchmarks/full.py
        ctx.set_threads(args.threads or 1)
        res["full"] += full.full_rows(ctx, size)
    if res["full"]:
        if plan.gpu:
            res["full_extract"] = full.full_extract_row(ctx)
        else:
            res["notes"].append("full-size rows on a CPU: the LLM widths at "
                                f"{plan.FULL_CPU_LAYERS} decoder layer(s), one boundary (3 samples) per batch, "
                                f"{plan.full_new_tokens()} new tokens, one run without warm-up; the recipe hours "
                                "are the FULL-depth FLOPs at the achieved FLOP/s (est.). Full EVA-ViT-g "
                                "extraction runs on a GPU only (the base rows estimate it here).")
    for size in small:
        ctx.set_threads(args.threads or 1)
        setup_size(ctx, size)
        if not args.threads and not args.quick and not plan.gpu and ctx.default_threads > 1 and not args.only_gen:
            res["threads_probe"].append(probe_threads(ctx, size))
        model = ctx.sizes[size]["model"]
        can_share = accepts_share_prefix(model)
        # Training, cached features: batch × precision; shared prefix off/on side by side (one parameter).
        pair = [False, True] if can_share else [None]
        for B in plan.batches if not args.only_gen else []:
            for prec in plan.train_precisions(size, info["bf16_native"], B):
                shares = pair if (prec == "fp32" and B in plan.share_batches(size)) else [None]
                res["train"] += train_rows(ctx, size, B, prec, shares)
        # Training, raw video through the frozen encoder (the other path).
        for B in plan.raw_batches(size) if not args.only_gen else []:
            shares = pair if (B >= 3 and (size == "tiny" or plan.gpu)) else [None]
            res["train"] += train_rows(ctx, size, B, "fp32", shares, raw_video=True)
        # Generation: the project's decoder vs the earlier path through transformers' generate.
        for prec in plan.gen_precisions():
            for load in args.gen_loads.split(","):
                beams = [int(x) for x in args.gen_beams.split(",")] if args.gen_beams else plan.gen_beams(size, load)
                for k in beams:
                    res["gen"] += gen_rows(ctx, size, k, pair, precision=prec, backends=("hf", "own"), load=load)
        if args.only_gen:
            del ctx.sizes[size]
            continue
        # Feature extraction.
        frames = (16 if args.quick else 64) if size == "tiny" else (8 if plan.gpu else 2)
        res["extract"].append(extract_row(ctx, size, frames))
        if plan.gpu:
            res["extract"].append(extract_row(ctx, size, frames, "fp16"))
        # Profile (on the largest size, at batch 4).
        if size == small[-1]:
            res["profile"].append(profile_findings(ctx, size, 4))
        if not can_share:
            res["notes"].append(f"{size}: model.forward has no share_prefix argument: no shared-prefix rows.")
        del ctx.sizes[size]  # free the model before the next size

    ctx.remeasure()
    ctx.set_threads(args.threads or None)
    res["matmul"] = list(ctx.matmul.values())
    for r in res["train"] + res["gen"] + res["extract"]:
        r["peak_ratio"] = r["achieved_gflops"] * 1e9 / ctx.matmul[r["limit_key"]]["flops"]
    for r in res["full"]:  # CPU: MFU against the matmul limit as re-measured (GPU: the datasheet peak)
        if not plan.gpu or "measured" in r["peak_source"]:
            dt = "bf16" if info["bf16_native"] else "fp32"
            lim = ctx.matmul.get(f"{dt}@{args.threads or 1}")
            if lim:
                r["mfu"] = r["achieved_tflops"] * 1e12 / lim["flops"]
    val = Path(args.val_json)
    if args.only_gen:
        pass
    elif val.is_file():
        res["score"] = score_row(ctx, val)
    else:
        res["notes"].append(f"scoring skipped: {val} not present")
        ctx.say(f"scoring skipped: {val} not present")
    res["gen_new_tokens"] = GEN_NEW_TOKENS
    res["wall_s"] = time.perf_counter() - ctx.t0
    res["info"]["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return res


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results.md"), help="markdown file to write")
    ap.add_argument("--quick", action="store_true", help="tiny size, batch 1/4, one timed run (smoke test)")
    ap.add_argument("--only-gen", action="store_true",
                    help="measure generation only (one timed run per row at least); this device's other rows, and "
                         "the generation rows of sizes not measured, are kept from the last run")
    ap.add_argument("--gen-beams", default=None,
                    help="beam counts of the generation rows (default: 1,2,4; at base size on a CPU see Plan.gen_beams)")
    ap.add_argument("--gen-loads", default=",".join(WORKLOADS), help="generation workloads: forced,realistic")
    ap.add_argument("--sizes", default="tiny,base,full",
                    help="comma-separated: tiny, base, full (= " + ",".join(workload.FULL) + ") or any of those")
    ap.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    ap.add_argument("--cache-dir", default=str(REPO / "build" / "bench"), help="where the random LLMs are made")
    ap.add_argument("--val-json", default=str(DEFAULT_VAL), help="Kinetics-GEBC val annotations to score")
    ap.add_argument("--spice", action="store_true", help="include SPICE in the scoring time (needs CoreNLP jars)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU torch threads (default 1: stable timings on shared cores, see probe_threads)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "llmva_gebc"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # e.g. "both min_new_tokens and min_length set" on every generate call
    res = run(args)
    out = Path(args.out)
    if args.only_gen:  # keep this device's other rows from the last full run
        import json

        jpath = out.with_suffix(".json")
        old = json.loads(jpath.read_text()).get(report.section_key(res["info"])) if jpath.is_file() else None
        if old is None:
            raise SystemExit(f"--only-gen: no earlier full run for this device in {jpath}; run without it first")
        gen = [r for r in old["gen"] if r["size"] not in res["sizes"]] + res["gen"]  # other sizes: kept
        res = dict(old, gen=gen, gen_new_tokens=res["gen_new_tokens"], gen_info=res["info"],
                   sizes=old["sizes"] + [x for x in res["sizes"] if x not in old["sizes"]])
    text = report.write(res, out)
    print(text)
    print(f"total wall time {res['wall_s']:.1f} s; wrote {out}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return res


if __name__ == "__main__":
    main()
