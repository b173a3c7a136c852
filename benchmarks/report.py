"""results.md / results.json / results.png from one benchmark run, keeping other devices' sections.

results.md = a header (how to run, how FLOPs are counted) + one section per device between
``<!-- bench-section:KEY -->`` and ``<!-- /bench-section:KEY -->`` markers (KEY = ``cpu`` or
``cuda-<card>``). Writing a run replaces only its own key's section (and its entry in results.json);
the plot is drawn from every device in results.json.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

from benchmarks import flops, workload

HEADER = """\
# Benchmarks

Written by `make bench` (`python benchmarks/run.py --out benchmarks/results.md`); `--device cuda`
(or `auto` on a machine with a GPU) writes its own section, naming the card, next to the CPU one —
rerunning on one device replaces only that device's section. Raw numbers: `results.json`; plot:
`results.png`. Every time is the **median of the timed runs after one warm-up run** (`runs` column:
how many; slow configurations get fewer, capped per row). Memory = peak above the memory in use
before the timed runs (CPU: process RSS sampled every 2 ms; GPU: `max_memory_allocated`), i.e. the
step's activations, gradients and temporaries, not the weights or the optimizer state.

Workloads (random weights: the speed of a configuration does not depend on trained weights):

{sizes}
* Batches: sample i = boundary i // 3 with caption type i % 3 (as a GEBC split is ordered), realistic
  prompts (`build_prompt`) and captions of 1–9 words. Generation, `forced` workload: exactly {new} new
  tokens per caption (`max_new_tokens = {new}`, EOS forbidden until then, so the work does not depend on
  when a random model emits EOS); `realistic`: max_length 30 and the EOS logit raised step by step
  (`eos_tilt` in `benchmarks/run.py`) so captions end after about 8–12 tokens, as a trained model's do.

## How FLOPs are counted

{formulas}
"""


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 0.01 or v == 0:
            return f"{v:.{nd}f}"
        return f"{v:.2e}"
    return str(v)


def table(rows: Sequence[Dict[str, Any]], cols: Sequence[tuple]) -> str:
    """Markdown table; ``cols`` = (header, key or callable)."""
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = [_fmt(k(r) if callable(k) else r.get(k)) for _, k in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _pct(r):
    return f"{100 * r['peak_ratio']:.1f} %"


def _train_cols():
    return [("size", "size"), ("path", "path"), ("precision", "precision"), ("batch", "batch"),
            ("share prefix", "share_prefix"), ("samples/s", "samples_per_s"), ("step s", "step_s"),
            ("runs", lambda r: f"{r['runs']}" + ("" if r.get("warmup", 1) else " (no warm-up)")), ("threads", "threads"),
            ("peak mem MiB", "peak_mem_mib"), ("LLM tokens/batch", "llm_tokens"),
            ("GFLOP/sample", "gflop_per_item"), ("achieved GFLOP/s", "achieved_gflops"), ("of matmul peak", _pct)]


def _gen_cols():
    return [("size", "size"), ("precision", "precision"), ("workload", lambda r: r.get("workload", "forced")),
            ("decoder", lambda r: r.get("backend", "hf")), ("beams", "beams"), ("batch", "batch"),
            ("share prefix", "share_prefix"), ("tokens/caption", "caption_tokens"), ("captions/s", "captions_per_s"), ("call s", "call_s"),
            ("runs", "runs"), ("threads", "threads"), ("peak mem MiB", "peak_mem_mib"), ("LLM prompt tokens", "llm_prompt_tokens"),
            ("GFLOP/caption", "gflop_per_item"), ("achieved GFLOP/s", "achieved_gflops"), ("of matmul peak", _pct)]


def shared_pairs(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Shared vs unshared rows of the same configuration: measured and predicted speed-up."""
    out = []
    for kind, rows, rate in (("training", res["train"], "samples_per_s"), ("generation", res["gen"], "captions_per_s")):
        for r in rows:
            if not r["share_prefix"]:
                continue
            same = [u for u in rows if not u["share_prefix"] and all(
                u.get(k) == r.get(k) for k in ("size", "path", "precision", "batch", "beams", "backend", "workload"))]
            if not same:
                continue
            u = same[0]
            what = (f"{kind}, {r.get('path', '')}".rstrip(", ") if kind == "training" else
                    f"generation, {r['beams']} beam(s), {r.get('workload', 'forced')}, {r.get('backend', 'hf')} decoder")
            pair = {"size": r["size"], "what": what, "precision": r["precision"], "batch": r["batch"],
                    "unshared": u[rate], "shared": r[rate], "measured": r[rate] / u[rate],
                    "predicted": u["predicted_flops_batch"] / r["predicted_flops_batch"],
                    "tokens": f"{u.get('llm_tokens', u.get('llm_prompt_tokens'))} → "
                              f"{r.get('llm_tokens', r.get('llm_prompt_tokens'))}"}
            if kind == "generation":
                pair["same_captions"] = u["captions"] == r["captions"]
            out.append(pair)
    return out


def decoder_pairs(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per (size, precision, workload, beams): own vs hf decoder, unshared and shared, and own's shared
    speed-up against the FLOP prediction."""
    rows = [r for r in res["gen"] if r.get("backend")]
    out = []
    order = list(dict.fromkeys(r["size"] for r in rows))
    keys = sorted({(r["size"], r["precision"], r["workload"], r["beams"], r["batch"]) for r in rows},
                  key=lambda k: (order.index(k[0]), k[1:]))
    for size, prec, load, beams, batch in keys:
        get = {(r["backend"], r["share_prefix"]): r for r in rows
               if (r["size"], r["precision"], r["workload"], r["beams"], r["batch"]) == (size, prec, load, beams, batch)}
        if ("own", False) not in get or ("hf", False) not in get:
            continue
        o, h = get["own", False], get["hf", False]
        d = {"size": size, "workload": load, "beams": beams, "batch": batch, "hf": h["captions_per_s"],
             "own": o["captions_per_s"], "ratio": o["captions_per_s"] / h["captions_per_s"],
             "tokens": o["caption_tokens"]}
        if ("own", True) in get and ("hf", True) in get:
            os_, hs = get["own", True], get["hf", True]
            d.update(hf_shared=hs["captions_per_s"], own_shared=os_["captions_per_s"],
                     ratio_shared=os_["captions_per_s"] / hs["captions_per_s"],
                     shared_x=os_["captions_per_s"] / o["captions_per_s"],
                     predicted=o["predicted_flops_batch"] / os_["predicted_flops_batch"],
                     same=os_["captions"] == o["captions"])
            d["pct_pred"] = f"{100 * d['shared_x'] / d['predicted']:.0f} %"
        out.append(d)
    return out


def decoder_goals(dec: List[Dict[str, Any]]) -> List[str]:
    """The issue-11 speed goals, checked on the base-size rows (the goals are stated there)."""
    out = []
    for d in dec:
        if d["size"] != "base":
            continue
        tag = f"base, {d['workload']}, {d['beams']} beam(s)"
        if d["workload"] == "forced":
            out.append(f"{tag}: unshared own ≥ hf: ×{d['ratio']:.2f} — {'met' if d['ratio'] >= 1 else 'NOT met'}")
            if d["beams"] >= 2 and "shared_x" in d:
                pct = d["shared_x"] / d["predicted"]
                out.append(f"{tag}: shared speed-up ≥ 85 % of the FLOP prediction: ×{d['shared_x']:.2f} of "
                           f"×{d['predicted']:.2f} = {100 * pct:.0f} % — {'met' if pct >= 0.85 else 'NOT met'}")
        else:
            out.append(f"{tag}: own ≥ 2 × hf captions/s: ×{d['ratio']:.2f} — {'met' if d['ratio'] >= 2 else 'NOT met'}")
    return (["**Decoder speed goals** (issue 11; see `benchmarks/decoder_profile.md` for where a decode step's "
             "time goes)", ""] + [f"* {o}" for o in out] + [""]) if out else []


def section(res: Dict[str, Any]) -> str:
    info = res["info"]
    gpu = info["device"].startswith("cuda")
    title = f"GPU: {info['gpu']}" if gpu else f"CPU: {info['cpu']}"
    if res["quick"]:
        title += " (quick mode)"
    L = [f"## {title}", ""]
    mm = res["matmul"]
    L += [
        f"* Machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
        f"{info['torch_threads']} torch threads" + (f"; GPU {info['gpu']} ({info['gpu_mem_gib']} GiB, CUDA {info['cuda']})" if gpu else ""),
        f"* Software: torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}; "
        f"device `{info['device']}`; native bf16: {'yes' if info['bf16_native'] else 'no (bf16 autocast is emulated)'}",
        f"* Run: {info['date']}, total wall time **{res['wall_s']:.0f} s**; load average at start/end "
        f"{_load(info.get('load_avg_start'))} / {_load(info.get('load_avg_end'))} "
        "(other processes on the machine slow every row down alike)",
        f"* CPU threads: {res['train'][0]['threads'] if res['train'] else '–'} (see CPU threads below)",
        "* **Measured matmul limit** (one n×n @ n×n matmul, median of several after a warm-up, measured when "
        "first needed and again at the end of the run; the limit is the larger of the two, as other processes "
        "on the machine can only lower it). The `of matmul peak` columns divide a row's achieved FLOP/s by the "
        "limit at its thread count, for its dtype"
        + ("." if info["bf16_native"] else
           " — bf16 rows by the fp32 limit, since without native bf16 the hardware's limit IS its fp32 FMA rate "
           "(the bf16 matmul is shown for information: emulated, it is that slow)."),
        "",
        table(mm, [("dtype", "precision"), ("threads", "threads"), ("n", "n"), ("runs", "runs"),
                   ("start GFLOP/s", lambda r: r["flops_start"] / 1e9),
                   ("end GFLOP/s", lambda r: None if r.get("flops_end") is None else r["flops_end"] / 1e9),
                   ("limit GFLOP/s", lambda r: r["flops"] / 1e9)]),
        "",
    ]
    L += _summary(res)
    L += _full_md(res)
    L += ["### Training (adapter forward + backward + AdamW step through the frozen LLM)", "",
          table(res["train"], _train_cols()), ""]
    L += [f"### Generation (`model.generate`; forced: exactly {res.get('gen_new_tokens', 20)} new tokens per caption)", "",
          table(res["gen"], _gen_cols()), ""]
    pairs = shared_pairs(res)
    if pairs:
        L += ["### Shared prefix: measured vs predicted speed-up", "",
              "Predicted = FLOPs of the unshared call / FLOPs of the shared call for the same batch "
              "(from its token counts, formulas above); `LLM tokens` = tokens through the LLM per batch "
              "(training: padded rows × length; generation: prompt tokens incl. the k-fold beam expansion). "
              "Rows far below the matmul limit (the tiny size: a few %) are bound by per-op overhead, not by "
              "FLOPs, so fewer FLOPs do not make them faster; generation's decode steps (one token per row) are "
              "also overhead/memory-bound, which the prediction (FLOPs only) does not see.", "",
              table(pairs, [("size", "size"), ("what", "what"), ("precision", "precision"), ("batch", "batch"),
                            ("unshared /s", "unshared"), ("shared /s", "shared"), ("measured ×", "measured"),
                            ("predicted ×", "predicted"), ("LLM tokens", "tokens"),
                            ("same captions", lambda r: {True: "yes", False: "NO"}.get(r.get("same_captions")))]), ""]
    dec = decoder_pairs(res)
    if dec:
        L += ["### Caption decoder: the project's (`own`) vs transformers' `generate` (`hf`, the earlier path)", "",
              "Same batch, same model, measured interleaved. `forced`: exactly "
              f"{res.get('gen_new_tokens', 20)} new tokens per caption (EOS forbidden); `realistic`: max_length "
              "30 and an LM head tilted towards EOS so captions end after a few tokens (finished samples should "
              "stop costing compute). `shared ×` = own shared / own unshared captions/s; `% of predicted` = that "
              "speed-up over the FLOP-count prediction. Captions differ between decoders by design (own = the "
              "original's 4.28 search).", "",
              table(dec, [("size", "size"), ("workload", "workload"), ("beams", "beams"), ("batch", "batch"),
                          ("hf /s", "hf"), ("own /s", "own"), ("own / hf", "ratio"),
                          ("hf shared /s", "hf_shared"), ("own shared /s", "own_shared"),
                          ("own / hf, shared", "ratio_shared"), ("shared ×", "shared_x"),
                          ("predicted ×", "predicted"), ("% of predicted", "pct_pred"),
                          ("tokens/caption", "tokens"),
                          ("own: same captions shared", lambda r: {True: "yes", False: "NO"}.get(r.get("same")))]), ""]
        L += decoder_goals(dec)
    paths = _paths(res["train"])
    if paths:
        L += ["### Two training paths: cached features vs raw video", "",
              "Raw video = the frames through the frozen image encoder inside the training step "
              "(`model.use_encoder: true`, batch key `frames` (B, T, 3, 224, 224)), no gradients in the encoder.", "",
              table(paths, [("size", "size"), ("batch", "batch"), ("share prefix", "share_prefix"),
                            ("cached samples/s", "cached"), ("raw video samples/s", "raw"),
                            ("raw / cached", "ratio"), ("encoder share of raw-step FLOPs", "enc_share")]), ""]
    L += ["### Feature extraction (frozen image encoder, frames/s)", "",
          table(res["extract"], [("size", "size"), ("encoder", "encoder"), ("precision", "precision"),
                                 ("frames/call", "frames_per_call"), ("frames/s", "frames_per_s"), ("runs", "runs"), ("threads", "threads"),
                                 ("GFLOP/frame", "gflop_per_item"), ("achieved GFLOP/s", "achieved_gflops"),
                                 ("of matmul peak", _pct),
                                 ("full ViT-g GFLOP/frame", "full_depth_gflop_per_frame"),
                                 ("full ViT-g frames/s (est.)", "full_depth_frames_per_s_est")]), ""]
    if any(r.get("full_depth_frames_per_s_est") for r in res["extract"]):
        L += [f"The base encoder is EVA-ViT-g at {workload.BASE_VIT_LAYERS} of {workload.FULL_VIT_LAYERS} layers "
              "(the full one is seconds per frame on a CPU); the full-depth estimate = the measured FLOP/s / the "
              "full model's FLOPs per frame.", ""]
    s = res.get("score")
    L += ["### Scoring", ""]
    if s:
        L += [f"Scoring {'a ' + str(s['boundaries']) + '-boundary subset of ' if s['subset'] else 'the full '}"
              f"val split ({s['boundaries']} boundaries, {s['captions']} captions) with the references as "
              f"predictions (`llmva_gebc.eval.metrics.score_captions`: one PTB-tokenizer JVM call, CIDEr-D and "
              f"ROUGE-L per type{', SPICE' if s['spice'] else ''}): **{s['seconds']:.1f} s** (median of {s['runs']}). "
              f"CIDEr {s['CIDEr']:.1f}, ROUGE-L {s['ROUGE_L']:.1f}. "
              + ("SPICE included." if s["spice"] else
                 f"SPICE not included (`--spice` adds it; CoreNLP jars {'found' if s['spice_jars'] else 'not installed here'})."),
              ""]
    else:
        L += ["Skipped: " + "; ".join(n for n in res["notes"] if n.startswith("scoring")), ""]
    if res.get("threads_probe"):
        L += ["### CPU threads", "",
              "CPU rows run with one torch thread (`--threads N` to change): with other processes on the cores, "
              "every op's OpenMP barrier waits for a descheduled thread, so multi-thread timings swing with the "
              "neighbours' load (seen on this machine at load average ~6: a tiny training step 1.8 s with 2 "
              "threads vs 15 ms with 1, a base generate call 28 s vs 4.5 s) and rows measured minutes apart stop "
              "being comparable. What all cores gave at the time of this run (median of 3 training steps):", "",
              table([{"size": p["size"], "batch": p["batch"], **{f"t{k}": v for k, v in p["times"].items()},
                      "x": p["times"]["1"] / max(p["times"].items(), key=lambda kv: int(kv[0]))[1]}
                     for p in res["threads_probe"]],
                    [("size", "size"), ("batch", "batch")]
                    + [(f"{k} thread(s): step s", f"t{k}") for k in res["threads_probe"][0]["times"]]
                    + [("all cores speed-up", "x")]), ""]
    for p in res["profile"]:
        L += _profile_md(p, res)
    L += _before_after(res, pairs)
    notes = list(res["notes"])
    if not info["bf16_native"] and not gpu:
        notes.append("bf16: this CPU has no native bf16 (no avx512_bf16/amx_bf16), so bf16 autocast runs emulated "
                     "kernels (see the bf16 matmul limit), many times slower than fp32"
                     + ("; the base size is measured in bf16 at batch 1 only, one run without warm-up."
                        if "base" in res["sizes"] and not res["quick"] else "."))
    if notes:
        L += ["### Notes", ""] + [f"* {n}" for n in notes] + [""]
    return "\n".join(L)


def _full_md(res: Dict[str, Any]) -> List[str]:
    """The full-size LLM shapes (``benchmarks/full.py``): MFU and the projected recipe hours."""
    rows = res.get("full") or []
    if not rows:
        return []
    from benchmarks import full

    gpu = res["info"]["device"].startswith("cuda")
    r0 = rows[0]
    L = ["### Full-size shapes: the recipe on one device", "",
         f"Random LLMs with the released models' exact shapes, built on the meta device and materialised on "
         f"`{res['info']['device']}` in {r0['precision']}; the recipe's adapter in fp32 (trainable){', bf16 autocast' if r0['precision'] == 'bf16' else ''}. "
         f"MFU = achieved FLOP/s (analytic FLOPs, above; for the shared prefix those of the packed layout, one row "
         f"per boundary with attention over the whole row, which the flex kernel partly skips) / {r0['peak_source']}. Recipe = {workload.RECIPE_EPOCHS} epochs × "
         f"{workload.TRAIN_SPLIT_SAMPLES:,} train samples (26,626 boundaries × 3 caption types) at the row's rate."
         + ("" if gpu else " **CPU: reduced depth** (`layers` column), one boundary per batch, one run without "
            "warm-up; `recipe h (est.)` = the full-depth model's FLOPs at the FLOP/s achieved here, not a "
            "measurement of the full model."), "",
         table(rows, full.cols()), ""]
    flex = [r for r in rows if r["attention"] == "flex"]
    for r in flex:
        d = [u for u in rows if u["llm"] == r["llm"] and u["attention"] == "dense" and u["kind"] == "train"]
        if d and d[0].get("loss") is not None and r.get("loss") is not None:
            L.append(f"* {r['llm']}: flex vs dense packed attention: ×{r['items_per_s'] / d[0]['items_per_s']:.2f} "
                     f"samples/s; loss {r['loss']:.6f} vs {d[0]['loss']:.6f} (last timed step of each).")
    gen = [r for r in rows if r["kind"].startswith("generate") and "same_captions" in r]
    if gen:
        L.append("* Generation, shared vs unshared: same captions: "
                 + ", ".join(f"{r['llm']} {'yes' if r['same_captions'] else 'NO'}" for r in gen) + ".")
    fx = res.get("full_extract")
    if fx:
        L.append(f"* Feature extraction, full EVA-ViT-g/14 + Q-Former ({fx['precision']}, {fx['frames_per_call']} "
                 f"frames per call): **{fx['frames_per_s']:.1f} frames/s**, {fx['achieved_tflops']:.1f} TFLOP/s, "
                 f"MFU {100 * fx['mfu']:.1f} %.")
    return L + [""]


def _summary(res: Dict[str, Any]) -> List[str]:
    """A few headline numbers (largest measured configurations)."""
    out = []

    def pick(rows, **kv):
        return [r for r in rows if all(r.get(k) == v for k, v in kv.items())]

    for size in res["sizes"]:
        tr = pick(res["train"], size=size, path="cached features", precision="fp32", share_prefix=False)
        if tr:
            r = max(tr, key=lambda r: r["batch"])
            sh = pick(res["train"], size=size, path="cached features", precision="fp32", share_prefix=True, batch=r["batch"])
            out.append(f"{size} training, fp32, batch {r['batch']}: **{_fmt(r['samples_per_s'])} samples/s**, "
                       f"{_fmt(r['gflop_per_item'])} GFLOP/sample, {_fmt(r['achieved_gflops'])} GFLOP/s = "
                       f"**{_pct(r)} of the matmul limit**"
                       + (f"; with the shared prefix {_fmt(sh[0]['samples_per_s'])} samples/s "
                          f"(×{sh[0]['samples_per_s'] / r['samples_per_s']:.2f})" if sh else ""))
        g = pick(res["gen"], size=size, beams=4, precision="fp32", share_prefix=False, backend="own", workload="forced")
        gs = pick(res["gen"], size=size, beams=4, precision="fp32", share_prefix=True, backend="own", workload="forced")
        if g:
            out.append(f"{size} generation, 4 beams: **{_fmt(g[0]['captions_per_s'])} captions/s** ({_pct(g[0])} of the "
                       "limit)" + (f"; shared prefix {_fmt(gs[0]['captions_per_s'])} captions/s "
                                   f"(×{gs[0]['captions_per_s'] / g[0]['captions_per_s']:.2f})" if gs else ""))
    for r in res["extract"]:
        out.append(f"{r['size']} feature extraction: {_fmt(r['frames_per_s'])} frames/s ({_pct(r)} of the limit)"
                   + (f"; full-depth EVA-ViT-g ≈ {_fmt(r['full_depth_frames_per_s_est'])} frames/s (est.)"
                      if r.get("full_depth_frames_per_s_est") else ""))
    for r in res.get("full") or []:
        if r["kind"] == "train" and r["share_prefix"] and r["llm"] == "opt-13b":
            out.append(f"OPT-13B{' (' + r['layers'] + ' layers)' if r['reduced'] else ''} training, shared prefix "
                       f"({r['attention']}), batch {r['batch']}: {_fmt(r['items_per_s'])} samples/s, MFU "
                       f"**{100 * r['mfu']:.1f} %**, recipe {r['recipe_h']:.2f} h{' (est.)' if r['reduced'] else ''}")
    if res.get("score"):
        s = res["score"]
        out.append(f"scoring {s['boundaries']} val boundaries: {s['seconds']:.1f} s")
    return (["**Headline**", ""] + [f"* {o}" for o in out] + [""]) if out else []


def _load(v) -> str:
    return "–" if not v else "/".join(f"{x:.1f}" for x in v)


def _paths(train: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for r in train:
        if r["path"] != "raw video" or r["precision"] != "fp32":
            continue
        c = [u for u in train if u["path"] == "cached features" and u["precision"] == "fp32"
             and u["size"] == r["size"] and u["batch"] == r["batch"] and u["share_prefix"] == r["share_prefix"]]
        if c:
            enc = r["predicted_flops_batch"] - c[0]["predicted_flops_batch"]
            out.append({"size": r["size"], "batch": r["batch"], "share_prefix": r["share_prefix"],
                        "cached": c[0]["samples_per_s"], "raw": r["samples_per_s"],
                        "ratio": r["samples_per_s"] / c[0]["samples_per_s"],
                        "enc_share": f"{100 * enc / r['predicted_flops_batch']:.0f} %"})
    return out


def _profile_md(p: Dict[str, Any], res: Dict[str, Any]) -> List[str]:
    step = [r for r in res["train"] if r["size"] == p["size"] and r["batch"] == p["batch"] and r["precision"] == "fp32"
            and r["path"] == "cached features" and not r["share_prefix"]]
    step_s = step[0]["step_s"] if step else None
    tok_share = (p["tok_calls_captions_per_step"] * p["tok_call_us"] * 1e-6 / step_s) if step_s else None
    L = [f"### Profile: what a training step spends its time on ({p['size']}, batch {p['batch']}, fp32)", ""]
    L += ["* **Tokenisation**: after the first step, fixed strings (the prompts, \"Video:\") are tokenised "
          f"**{p['tok_calls_fixed_per_step']:.0f}** times per step (the model caches them in `_ids`); captions "
          f"{p['tok_calls_captions_per_step']:.0f} times per step (once per sample, {p['tok_call_us']:.0f} µs each"
          + (f", {100 * tok_share:.2f} % of the step" if tok_share is not None else "") + ").",
          f"* **Frozen LLM**: in train mode: {'YES' if p['llm_training_mode'] else 'no'} "
          f"({p['llm_modules_in_train_mode']} of its modules in train mode) while the model trains; LLM parameters "
          f"requiring grad: {p['llm_params_requiring_grad']}; LLM parameters holding a .grad after backward: "
          f"{p['llm_params_with_grad']} (LLM weights {p['llm_param_mib']:.0f} MiB, no gradient buffers for them). "
          + (f"Frozen encoder: train mode {'YES' if p.get('encoder_training_mode') else 'no'}, parameters with .grad "
             f"{p.get('encoder_params_with_grad')}. " if 'encoder_params_with_grad' in p else "")
          + f"Gradients held: {p['grad_mib']:.1f} MiB for {p['trainable_params_m']:.2f} M trainable parameters.",
          f"* **LM head on positions without a target**: the unshared loss computes logits (vocab × hidden) from "
          f"the first position that predicts a caption token on (`logits_to_keep`); what still has no target there "
          f"(padding, the tails of longer prompts) is {100 * p['lm_head_untargeted_share']:.0f} % of the step's FLOPs "
          "(forward + activation backward). The shared-prefix path computes logits from the shortest prefix on.",
          "* **Time by op** (torch.profiler self time over one step, forward + backward + AdamW):", ""]
    L += [table([{"k": k, "v": f"{100 * v:.1f} %"} for k, v in p["categories"].items()], [("category", "k"), ("share", "v")]), ""]
    L += [table([{"op": o["op"], "share": f"{100 * o['share']:.1f} %", "calls": o["calls"]} for o in p["top_ops"]],
                [("top ops", "op"), ("share", "share"), ("calls", "calls")]), ""]
    return L


def _before_after(res: Dict[str, Any], pairs: Sequence[Dict[str, Any]]) -> List[str]:
    L = ["### Fixing what it shows: before / after", ""]
    if pairs:
        L += ["* **Visual prefix computed once per boundary, shared by its three caption prompts** "
              "(`share_prefix`, `models/shared_prefix.py`): before = `share_prefix` off, after = on, same batch:", ""]
        L += [table(pairs, [("size", "size"), ("what", "what"), ("batch", "batch"), ("before /s", "unshared"),
                            ("after /s", "shared"), ("speed-up", "measured"), ("predicted", "predicted")]), ""]
    else:
        L += ["* Shared prefix: not available in this model build (no rows).", ""]
    prof = res["profile"][0] if res["profile"] else None
    if prof:
        B = prof["batch"]
        L += [f"* **Repeated tokenisation of fixed prompt strings**: none found — {prof['tok_calls_fixed_per_step']:.0f} "
              "tokenizer calls per step for fixed strings (`LLMVAGEBC._ids` caches them); before = after, no change "
              f"needed. (Tokenising them every step would cost {B + 1} calls × {prof['tok_call_us']:.0f} µs per step "
              f"at batch {B}: negligible next to the step either way.)",
              f"* **Frozen LLM in eval mode with no grad buffers**: confirmed ({prof['llm_modules_in_train_mode']} LLM "
              f"modules in train mode, {prof['llm_params_requiring_grad']} LLM parameters requiring grad, "
              f"{prof['llm_params_with_grad']} holding a .grad); before = after, no change needed. (Weight gradients "
              f"for the LLM would add {prof['llm_param_mib']:.0f} MiB of gradient buffers and "
              f"{100 * prof['llm_weight_grad_share']:.0f} % more FLOPs per step at batch {B}; dropout in train mode "
              "would change the loss.)", ""]
    L += ["* **Fixed after the first benchmark run** (in package code):", ""]
    if prof:
        L += [f"  * The unshared loss computed logits at every position "
              f"({100 * prof.get('lm_head_untargeted_share_before', prof['lm_head_untargeted_share']):.0f} % "
              "of a step's FLOPs on positions without a target, counted by this benchmark's FLOP model): it now runs "
              "the LM head from the first caption position on only (`LLMVAGEBC.caption_loss`, `logits_to_keep`); "
              "measured at base size, batch 16: x1.25 per step, peak memory 1,584 MB -> 1,141 MB."]
    bf = [r for r in res["train"] if r["precision"] == "bf16" and r["size"] != "tiny"]
    fp = [r for r in res["train"] if r["precision"] == "fp32" and r["path"] == "cached features"
          and not r["share_prefix"] and bf and r["size"] == bf[0]["size"] and r["batch"] == bf[0]["batch"]]
    if bf and fp and not res["info"]["bf16_native"] and not res["info"]["device"].startswith("cuda"):
        L += [f"  * bf16 autocast on this CPU (no native bf16) is {bf[0]['step_s'] / fp[0]['step_s']:.0f}× slower than "
              f"fp32 ({bf[0]['size']}, batch {bf[0]['batch']}: {bf[0]['step_s']:.1f} s vs {fp[0]['step_s']:.2f} s per "
              "step): the trainer's `run.amp: fp16` on CPU now falls back to fp32, not to bf16 autocast."]
    if res.get("threads_probe"):
        L += ["", "* **Still open**:", "", "  * CPU threads on shared cores (see CPU threads): small-model work (tests, the tiny demo) is faster and "
              "steadier with `torch.set_num_threads(1)` / `OMP_NUM_THREADS=1` when other processes use the cores."]
    L += [""]
    return L


# ------------------------------------------------------------------------------------ files
MARK = "<!-- bench-section:{} -->"
END = "<!-- /bench-section:{} -->"


def _sections(text: str) -> Dict[str, str]:
    out = {}
    for m in re.finditer(r"<!-- bench-section:(\S+) -->\n(.*?)<!-- /bench-section:\1 -->", text, re.S):
        out[m.group(1)] = m.group(2)
    return out


def section_key(info: Dict[str, Any]) -> str:
    """``cpu`` or ``cuda-<card name>``: the results.md section (and results.json entry) of a run."""
    if info["device"].startswith("cuda"):
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    return "cpu"


def header() -> str:
    sizes = "\n".join(f"* {n}" for s in workload.SIZES.values() for n in s.notes)
    return HEADER.format(sizes=sizes, formulas=flops.FORMULAS, new=20)


def merge_section(out: Path, key: str, sec: str) -> None:
    """Put ``sec`` as section ``key`` of ``out`` (results.md), keeping the other sections (cpu first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = _sections(out.read_text()) if out.is_file() else {}
    old[key] = sec.rstrip("\n") + "\n\n"
    order = sorted(old, key=lambda k: (k != "cpu", k.startswith("cuda"), k))
    text = header() + "\n" + "\n".join(f"{MARK.format(k)}\n{old[k]}{END.format(k)}\n" for k in order)
    _atomic(out, text)


def write(res: Dict[str, Any], out: Path) -> str:
    """Merge this run's section into ``out`` (+ .json, .png); returns this run's section text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    key = section_key(res["info"])
    sec = section(res)
    merge_section(out, key, sec)
    jpath = out.with_suffix(".json")
    data = {}
    if jpath.is_file():
        try:
            data = json.loads(jpath.read_text())
        except ValueError:
            data = {}
    data[key] = res
    _atomic(jpath, json.dumps(data, indent=1, default=str))
    plot(data, out.with_suffix(".png"))
    return sec


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot(data: Dict[str, Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = sorted(data, key=lambda k: (k != "cpu", k))
    fig, axes = plt.subplots(len(keys), 3, figsize=(18, 6.2 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys):
        res = data[key]
        name = res["info"].get("gpu") or res["info"]["cpu"]
        ax = row[0]
        groups: Dict[tuple, list] = {}
        for r in res["train"]:
            groups.setdefault((r["size"], r["path"], r["precision"], r["share_prefix"]), []).append(r)
        for (size, pth, prec, sh), rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r["batch"])
            ax.plot([r["batch"] for r in rs], [r["samples_per_s"] for r in rs], marker="o",
                    linestyle="--" if sh else ("-" if pth.startswith("cached") else ":"),
                    label=f"{size} {prec} {'raw' if pth.startswith('raw') else 'cached'}{' shared' if sh else ''}")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples/s", title=f"training — {name}")
        ax.set_xticks([1, 4, 16], ["1", "4", "16"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
        ax = row[1]
        g2: Dict[tuple, list] = {}
        for r in res["gen"]:
            g2.setdefault((r["size"], r["precision"], r["share_prefix"]), []).append(r)
        for (size, prec, sh), rs in sorted(g2.items()):
            rs = sorted(rs, key=lambda r: r["beams"])
            ax.plot([r["beams"] for r in rs], [r["captions_per_s"] for r in rs], marker="o",
                    linestyle="--" if sh else "-", label=f"{size} {prec}{' shared' if sh else ''}")
        ax.set(xscale="log", yscale="log", xlabel="beams", ylabel="captions/s", title="generation")
        ax.set_xticks([1, 2, 4], ["1", "2", "4"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
        ax = row[2]
        items = [(f"train {r['size']} {r['precision']} B{r['batch']}{' raw' if r['path'].startswith('raw') else ''}"
                  f"{' sh' if r['share_prefix'] else ''}", r["peak_ratio"]) for r in res["train"]]
        items += [(f"gen {r['size']} {r['precision']} k{r['beams']}{' sh' if r['share_prefix'] else ''}", r["peak_ratio"])
                  for r in res["gen"]]
        items += [(f"extract {r['size']} {r['precision']}", r["peak_ratio"]) for r in res["extract"]]
        ax.barh(range(len(items)), [100 * v for _, v in items], color="tab:blue")
        ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=6)
        ax.invert_yaxis()
        ax.set(xlabel="achieved FLOP/s, % of measured matmul FLOP/s", title="ratio to the matmul limit")
    fig.tight_layout(h_pad=4)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
