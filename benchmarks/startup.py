"""Start-up cost of the full-size frozen image encoder (EVA-ViT-g/14 + BLIP-2 Q-Former, 1.09 G parameters).

    python benchmarks/startup.py [--out benchmarks/startup.md] [--cache-dir build/bench] [--device cpu]

Writes a full-size checkpoint pair in the LAVIS layout once (random values; ``eva_vit_g.pth`` in fp16 as
LAVIS ships it, ~2.1 GB, and ``blip2_pretrained.pth`` in fp32) under ``--cache-dir``, then times, in one
run and alternating:

* **before**: what ``build_encoder`` did until issue 16: construct the modules with their random
  initialisation, then load the checkpoint over it;
* **after**: ``build_encoder`` now: build on the meta device, allocate uninitialised on the target device,
  load the checkpoint (strict: every key present, so nothing stays uninitialised).

Both end with identical weights (checked). Wall time of one build each, ``--reps`` times; medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def full_cfg(cache: Path):
    from llmva_gebc.config import EncoderConfig

    cfg = OmegaConf.structured(EncoderConfig)
    cfg.precision = "fp32"
    cfg.weights = "lavis"
    cfg.eva_vit_path = str(cache / "eva_vit_g.pth")
    cfg.qformer_path = str(cache / "blip2_pretrained.pth")
    return cfg


def make_checkpoints(cfg) -> None:
    """A random full-size LAVIS checkpoint pair (made once: the values do not matter for the timing)."""
    from llmva_gebc.models import keymaps
    from llmva_gebc.models.encoder import FrozenImageEncoder, _qformer_config, _vision_config

    if Path(cfg.eva_vit_path).is_file() and Path(cfg.qformer_path).is_file():
        return
    Path(cfg.eva_vit_path).parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        enc = FrozenImageEncoder(_vision_config(cfg.vision), _qformer_config(cfg.qformer, cfg.vision.hidden_size),
                                 cfg.num_query_tokens)
    enc.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.04 - 0.02)
    vit = {k: v.half() for k, v in keymaps.eva_vit_to_lavis(
        {k: v for k, v in enc.vision.state_dict().items() if not k.startswith("post_layernorm")}).items()}
    torch.save(vit, cfg.eva_vit_path)
    del vit
    qf = {"Qformer." + keymaps.qformer_to_lavis(k): v for k, v in enc.qformer.state_dict().items()}
    qf["query_tokens"] = enc.query_tokens.detach().clone()
    qf["ln_vision.weight"] = enc.vision.post_layernorm.weight.detach().clone()
    qf["ln_vision.bias"] = enc.vision.post_layernorm.bias.detach().clone()
    torch.save({"model": qf}, cfg.qformer_path)


def build_before(cfg, device: str):
    """The pre-issue-16 path: random initialisation, then the checkpoint load over it."""
    from llmva_gebc.models.encoder import FrozenImageEncoder, _qformer_config, _vision_config, load_lavis_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        enc = FrozenImageEncoder(_vision_config(cfg.vision), _qformer_config(cfg.qformer, cfg.vision.hidden_size),
                                 cfg.num_query_tokens)
    load_lavis_weights(enc, cfg.eva_vit_path, cfg.qformer_path)
    return enc.to(device)


def build_after(cfg, device: str):
    from llmva_gebc.models.encoder import build_encoder

    return build_encoder(cfg, device=device)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "startup.md"))
    ap.add_argument("--cache-dir", default=str(REPO / "build" / "bench"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args(argv)
    cfg = full_cfg(Path(a.cache_dir))
    t = time.perf_counter()
    make_checkpoints(cfg)
    print(f"checkpoints ready in {time.perf_counter() - t:.1f} s", flush=True)
    times = {"before": [], "after": []}
    for _ in range(a.reps):
        for name, fn in (("after", build_after), ("before", build_before)):
            t = time.perf_counter()
            enc = fn(cfg, a.device)
            times[name].append(time.perf_counter() - t)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
            if name == "after":
                ref = {k: v.clone() for k, v in list(enc.state_dict().items())[:4] + list(enc.state_dict().items())[-4:]}
            else:
                sd = enc.state_dict()
                assert all(torch.equal(sd[k], v) for k, v in ref.items()), "before/after weights differ"
            n = sum(p.numel() for p in enc.parameters()) / 1e9
            del enc
    # The construction alone (what the checkpoint load then overwrites): random init vs meta device.
    from llmva_gebc.models.encoder import FrozenImageEncoder, _qformer_config, _vision_config

    args = (_vision_config(cfg.vision), _qformer_config(cfg.qformer, cfg.vision.hidden_size), cfg.num_query_tokens)
    for name, dev in (("construct_after", "meta"), ("construct_before", "cpu")):
        t = time.perf_counter()
        with torch.device(dev):
            enc = FrozenImageEncoder(*args)
        times[name] = [time.perf_counter() - t]
        print(f"{name}: {times[name][-1]:.1f} s", flush=True)
        del enc
    med = {k: statistics.median(v) for k, v in times.items()}
    import os

    text = (f"# Start-up: full-size frozen image encoder\n\nWritten by `python benchmarks/startup.py` "
            f"({time.strftime('%Y-%m-%d %H:%M')}, device `{a.device}`, {torch.get_num_threads()} torch threads, "
            f"load average {os.getloadavg()[0]:.1f}). EVA-ViT-g/14 (39 × 1408) + BLIP-2 Q-Former, {n:.2f} G "
            f"parameters, loaded from a LAVIS-layout checkpoint pair (ViT fp16, {Path(cfg.eva_vit_path).stat().st_size / 1e9:.2f} GB).\n\n"
            f"| build | wall s (median of {a.reps}) |\n|---|---|\n"
            f"| before: random initialisation, then load | {med['before']:.1f} |\n"
            f"| after: meta device, then load | {med['after']:.1f} |\n"
            f"| construction alone, before: random initialisation | {med['construct_before']:.1f} |\n"
            f"| construction alone, after: meta device | {med['construct_after']:.2f} |\n\n"
            f"Speed-up of the whole build: **{med['before'] / med['after']:.1f}×** (both give identical weights); "
            f"of the construction: {med['construct_before'] / med['construct_after']:.0f}×. What remains after is the "
            f"load itself: reading the checkpoint and converting 1 G fp16 values into the fp32 parameters "
            f"(memory-bound, so it slows most when other processes share the cores).\n")
    Path(a.out).write_text(text)
    print(text)
    return med


if __name__ == "__main__":
    main()
