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
    full: bool = False  # a full-size LLM shape (FULL_LLMS): built in memory by build_full, never saved


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


# ------------------------------------------------------------------------------------ full size
# The recipe's adapter (H=768, 12 frames × 32 tokens) with the other-feature branch (InternVideo 768 +
# Omnivore 1536 + CLIP 768 = 3072 wide, 8 queries) over 96 steps, as train_configs/gebc_opt13b.yaml.
FULL_OTHER_STEPS = 96
FULL_ADAPTER = [o for o in SIZES["base"].options if o.startswith("model.adapter.")] + [
    "model.encoder.num_query_tokens=32", "model.encoder.qformer.hidden_size=768",
    "model.adapter.other_feats=[{name: internvideo, dim: 768}, {name: omnivore, dim: 1536}, {name: clip, dim: 768}]",
    "model.adapter.other_num_query_tokens=8", "model.adapter.other_max_pos=128"]
# Exact shapes of the released checkpoints' config.json (random weights, built on the target device).
FULL_LLMS: Dict[str, Dict[str, Any]] = {
    "opt-2.7b": dict(arch="opt", hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240,
                     vocab_size=50272),
    "opt-6.7b": dict(arch="opt", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384,
                     vocab_size=50272),
    "opt-13b": dict(arch="opt", hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480,
                    vocab_size=50272),
    "vicuna-13b": dict(arch="llama", hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                       intermediate_size=13824, vocab_size=32000),
}
for _name, _llm in FULL_LLMS.items():
    SIZES[_name] = Size(_name, FULL_ADAPTER, num_frames=12, gen_batch=16, llm=_llm, full=True)
SIZES["opt-2.7b"].notes.append(
    "full (`--sizes full`): the recipe's adapter (H=768, 12 frames × 32 tokens, other-feature branch 3072 wide "
    "over 96 steps, 8 queries) + random LLMs with the exact shapes of " + ", ".join(FULL_LLMS) + ", built on the "
    "meta device and materialised on the target device in bf16 (fp32 on a CPU without native bf16; reduced depth "
    "on a CPU, see its section); batch 16 on a GPU.")
FULL = list(FULL_LLMS)
# The recipe: 5 epochs over the Kinetics-GEBC train split, 26,626 boundaries × 3 caption types.
TRAIN_SPLIT_SAMPLES = 26626 * 3
RECIPE_EPOCHS = 5


def llm_config(spec: Dict[str, Any], layers: Optional[int] = None):
    """A transformers config with the shapes of ``spec`` (``FULL_LLMS``), optionally ``layers`` deep."""
    from transformers import LlamaConfig, OPTConfig

    from llmva_gebc.models.tiny import make_tokenizer

    kw = {k: v for k, v in spec.items() if k != "arch"}
    if layers is not None:
        kw["num_hidden_layers"] = layers
    tok = make_tokenizer(arch=spec["arch"])
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if spec["arch"] == "opt":
        return OPTConfig(word_embed_proj_dim=kw["hidden_size"], do_layer_norm_before=True, dropout=0.1,
                         max_position_embeddings=2048, **ids, **kw), tok
    return LlamaConfig(rms_norm_eps=1e-6, max_position_embeddings=2048, **ids, **kw), tok


def build_llm_on_device(config, device: str, dtype: torch.dtype, seed: int = 0):
    """A random causal LM built on the meta device, then materialised on ``device`` in ``dtype`` and
    initialised there (N(0, 0.02) matrices, unit norm weights, zero biases): no full-size host copy, no fp32
    copy. Non-persistent buffers (LLaMA's rotary frequencies) come from a 0-layer twin built on ``device``."""
    import copy

    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=g)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
        twin_cfg = copy.deepcopy(config)
        twin_cfg.num_hidden_layers, twin_cfg.vocab_size = 0, 8
        with torch.device(device):
            twin = AutoModelForCausalLM.from_config(twin_cfg, dtype=dtype)
        twin_bufs = dict(twin.named_buffers())
        for name, b in model.named_buffers():
            if name in twin_bufs:
                b.copy_(twin_bufs[name])
    model.eval()
    return model


def build_full(size: Size, device: str, dtype: torch.dtype, layers: Optional[int] = None, seed: int = 0):
    """(model, cfg) for a full-size entry: the recipe's adapter (fp32, trainable) + a random LLM of the
    entry's exact shapes (``layers`` deep when given) built on ``device`` in ``dtype``."""
    from llmva_gebc.models.llmva_gebc import LLMVAGEBC, build_adapter

    cfg = load_cfg(size, "unused", "model.use_encoder=false")
    llm_cfg, tok = llm_config(size.llm, layers)
    llm = build_llm_on_device(llm_cfg, device, dtype, seed)
    llm.generation_config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    adapter = build_adapter(cfg.model.adapter, llm_cfg.hidden_size).to(device)
    model = LLMVAGEBC(adapter, llm, tok, max_txt_len=cfg.model.max_txt_len, generation=dict(cfg.model.generation))
    return model, cfg


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
        steps = FULL_OTHER_STEPS if size.full else cfg.model.adapter.other_max_pos
        batch["other_feats"] = torch.randn(nb, steps, sum(dims), generator=g)[idx]  # (B, S, sum d)
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
                        tail_len=tail, members=[list(g) for g in groups])
