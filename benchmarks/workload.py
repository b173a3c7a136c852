"""What the benchmark runs: model sizes (configs + locally made random LLMs) and GEBC-shaped batches.

Sizes (``SIZES``):

* ``tiny``: ``train_configs/tiny.yaml`` as it is (adapter H=32, tiny random OPT from
  ``llmva_gebc.models.tiny``, tiny image encoder, 4 frames × 4 query tokens).
* ``base``: the winning recipe's adapter (H=768, 12 heads, FFN 3072, 32 queries, no other-feature
  branch) over 12 frames × 32 image tokens, and a ~125M-class OPT decoder made from config with random
  weights (hidden 768, 12 layers, 12 heads, FFN 3072, vocab 50272, OPT-125m's shapes) using the tiny
  BPE tokenizer (ids < 600, which is all the prompts and captions need). Its image encoder (raw-video
  path, extraction) is EVA-ViT-g's width (1408, FFN 6144, 16 heads, patch 14) at REDUCED depth
  (``BASE_VIT_LAYERS`` of 39 layers) + the full BLIP-2 Q-Former: the full ViT-g costs ~0.5 TFLOP per
  frame, seconds per frame on a CPU. Full-depth numbers are extrapolated from the measured FLOP/s.

Batches: sample i is boundary i // 3 with caption type i % 3 (the order a GEBC split yields: the three
types of a boundary next to each other), so samples of one boundary share their inputs exactly as in
the data pipeline, and the shared-prefix path can group them.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks import flops

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "train_configs" / "tiny.yaml"
BASE_VIT_LAYERS = 1
FULL_VIT_LAYERS = 39

LABELS = ["Change of Action", "Change of Subject", "Change of Object Being Interacted", "Change of Color", "Multiple"]
CAPTIONS = [
    "a man in a blue shirt", "standing on the stage", "jumping up and down", "the red circle",
    "holding a ball in the hand", "walking to the left side of the room", "/0", "a woman",
    "sitting on the floor", "turns around and looks at the camera", "the green square", "moving up",
]

BASE_LLM = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072, vocab_size=50272,
                max_position_embeddings=2048)


@dataclass
class Size:
    name: str
    options: List[str]  # --options overrides on top of tiny.yaml
    num_frames: int
    gen_batch: int  # captions per generate call
    llm: Optional[Dict[str, Any]] = None  # None: make_tiny_llm defaults
    notes: List[str] = field(default_factory=list)


SIZES: Dict[str, Size] = {
    "tiny": Size("tiny", [], num_frames=4, gen_batch=12,
                 notes=["tiny: train_configs/tiny.yaml (adapter H=32, random 2-layer OPT, hidden 64, vocab 600)."]),
    "base": Size(
        "base",
        ["model.adapter.hidden_size=768", "model.adapter.num_attention_heads=12",
         "model.adapter.intermediate_size=3072", "model.adapter.num_query_tokens=32",
         "model.encoder.num_query_tokens=32",
         "model.encoder.vision.hidden_size=1408", "model.encoder.vision.intermediate_size=6144",
         f"model.encoder.vision.num_hidden_layers={BASE_VIT_LAYERS}", "model.encoder.vision.num_attention_heads=16",
         "model.encoder.vision.patch_size=14",
         "model.encoder.qformer.hidden_size=768", "model.encoder.qformer.num_hidden_layers=12",
         "model.encoder.qformer.num_attention_heads=12", "model.encoder.qformer.intermediate_size=3072",
         "model.encoder.qformer.cross_attention_frequency=2"],
        num_frames=12, gen_batch=6, llm=BASE_LLM,
        notes=["base: adapter H=768/12 heads/FFN 3072/32 queries over 12 frames × 32 tokens (no other-feature "
               "branch); random OPT-125m-shaped decoder (768 hidden, 12 layers, 12 heads, FFN 3072, vocab 50272); "
               f"image encoder = EVA-ViT-g width at {BASE_VIT_LAYERS} of {FULL_VIT_LAYERS} layers + full BLIP-2 Q-Former."]),
}


def make_llm(size: Size, cache_dir: Path) -> str:
    """The size's random LLM directory under ``cache_dir`` (made once, reused while its spec matches)."""
    out = cache_dir / f"llm_{size.name}"
    spec = json.dumps(size.llm or {"tiny": True}, sort_keys=True)
    stamp = out / "bench_spec.json"
    if stamp.is_file() and stamp.read_text() == spec and (out / "config.json").is_file():
        return str(out)
    if size.llm is None:
        from llmva_gebc.models.tiny import make_tiny_llm

        make_tiny_llm(out, arch="opt")
    else:
        from transformers import AutoModelForCausalLM, OPTConfig

        from llmva_gebc.models.tiny import make_tokenizer

        out.mkdir(parents=True, exist_ok=True)
        tok = make_tokenizer(arch="opt")
        cfg = OPTConfig(word_embed_proj_dim=size.llm["hidden_size"], do_layer_norm_before=True, dropout=0.1,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, **size.llm)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)
    stamp.write_text(spec)
    return str(out)


def load_cfg(size: Size, llm_dir: str, *extra: str):
    from llmva_gebc.config import load_config

    return load_config(TINY_CFG, [f"model.llm.path={llm_dir}", "model.llm.dtype=fp32", *size.options, *extra])


def build(cfg, device: str, seed: int = 0):
    from llmva_gebc.models import build_model

    torch.manual_seed(seed)
    return build_model(cfg.model, device=device)


def make_batch(cfg, size: Size, batch_size: int, seed: int = 0, raw_video: bool = False,
               with_caption: bool = True) -> Dict[str, Any]:
    """B samples; sample i = boundary i // 3, type i % 3 (inputs shared within a boundary)."""
    from llmva_gebc.data.gebc import TYPES, build_prompt

    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    nb = (batch_size + 2) // 3
    Q, H = cfg.model.encoder.num_query_tokens, cfg.model.adapter.hidden_size
    T = size.num_frames
    labels = [rng.choice(LABELS) for _ in range(nb)]
    if raw_video:
        S = cfg.model.encoder.vision.image_size
        per_boundary = torch.randn(nb, T, 3, S, S, generator=g)  # (nb, T, 3, S, S), CLIP-normalised scale
        key = "frames"
    else:
        per_boundary = torch.randn(nb, T, Q, H, generator=g)  # (nb, T, Q, H)
        key = "q_tokens"
    ref = torch.rand(nb, 2, generator=g, dtype=torch.float64)  # (nb, 2)
    idx = torch.arange(batch_size) // 3
    batch: Dict[str, Any] = {
        "boundary_id": [f"bench{seed:04d}{b:03d}_{b}" for b in idx.tolist()],
        "video_id": [f"bench{seed:04d}{b:03d}" for b in idx.tolist()],
        "type": [TYPES[i % 3] for i in range(batch_size)],
        "label": [labels[b] for b in idx.tolist()],
        "prompt": [build_prompt(labels[b], TYPES[i % 3]) for i, b in enumerate(idx.tolist())],
        "caption": [rng.choice(CAPTIONS) if with_caption else None for _ in range(batch_size)],
        key: per_boundary[idx].contiguous(),  # (B, ...)
        "ref_points": ref[idx].contiguous(),  # (B, 2)
    }
    dims = [int(o.dim) for o in cfg.model.adapter.other_feats]
    if dims:
        batch["other_feats"] = torch.randn(nb, cfg.model.adapter.other_max_pos, sum(dims), generator=g)[idx]
    return batch


def token_layout(model, batch: Dict[str, Any], with_caption: bool = True) -> flops.Tokens:
    """Token counts of ``batch`` as the model lays it out, unshared and shared (``models/shared_prefix.py``)."""
    head = 1 + len(model.video_prefix_ids)
    nv = model.adapter.num_visual_tokens
    ids = [model._ids(p) for p in batch["prompt"]]
    full = [head + nv + len(x) for x in ids]
    caps = [len(model.caption_ids(c)) if with_caption else 0 for c in batch["caption"]]
    try:
        from llmva_gebc.models.shared_prefix import common_prefix_len, find_groups

        groups = find_groups(batch)
    except ImportError:  # no shared-prefix support: every sample is its own group
        groups = [[i] for i in range(len(ids))]

        def common_prefix_len(seqs):
            return len(seqs[0]) - 1 if len(seqs) == 1 else 0

    prefix, tail = [], [0] * len(ids)
    for g in groups:
        k = common_prefix_len([ids[i] for i in g])
        prefix.append(head + nv + k)
        for i in g:
            tail[i] = len(ids[i]) - k
    return flops.Tokens(batch=len(ids), groups=len(groups), full_len=full, cap_len=caps, prefix_len=prefix,
                        tail_len=tail)
