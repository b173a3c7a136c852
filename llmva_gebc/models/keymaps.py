"""Key converters between the original (LAVIS / Video-LLaMA / LLMVA-GEBC) state dicts and ours.

Ours uses ``transformers.Blip2QFormerModel`` and ``Blip2VisionModel``; the originals use LAVIS's BERT
Q-Former and EVA ViT. The correspondences are those of transformers' BLIP-2 conversion script:
``bert.embeddings.LayerNorm`` → ``layernorm``, ``attention.self`` → ``attention.attention``,
``crossattention.self`` → ``crossattention.attention``; EVA ``qkv`` = q | k | v stacked, with the
bias ``q_bias | 0 | v_bias`` (k has no bias).
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Tuple

import torch

# Keys the originals carry that are not parameters of the network we rebuild.
_QFORMER_TEXT_BRANCH = re.compile(
    r"(^|\.)embeddings\.(word_embeddings|position_embeddings|position_ids)"
    r"|(^|\.)layer\.\d+\.(intermediate|output)\.|^cls\.|(^|\.)cls\."
)


def qformer_from_lavis(key: str) -> str | None:
    """``bert.encoder.layer.0.attention.self.query.weight`` → HF ``encoder.layer.0.attention.attention.query.weight``.

    ``key`` is relative to the LAVIS ``Qformer`` module. Returns None for text-branch keys and buffers
    that the query-only HF Q-Former does not have.
    """
    if _QFORMER_TEXT_BRANCH.search(key):
        return None
    if key.startswith("bert."):
        key = key[len("bert."):]
    key = key.replace("embeddings.LayerNorm.", "layernorm.")
    key = key.replace("attention.self.", "attention.attention.")  # also crossattention.self.
    return key


def qformer_to_lavis(key: str) -> str:
    """Inverse of :func:`qformer_from_lavis` for the keys the HF model has."""
    key = key.replace("attention.attention.", "attention.self.")
    if key.startswith("layernorm."):
        key = "embeddings.LayerNorm." + key[len("layernorm."):]
    return "bert." + key


# EVA ViT (LAVIS) → Blip2VisionModel names: top-level tensors, and modules inside block i.
_EVA_SIMPLE = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
}
_EVA_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.projection",
              "attn.qkv": "self_attn.qkv", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def eva_vit_from_lavis(sd: Dict[str, torch.Tensor], num_layers: int) -> Dict[str, torch.Tensor]:
    """Convert an ``eva_vit_g.pth`` state dict to ``Blip2VisionModel`` keys (first ``num_layers`` blocks).

    ``ln_vision.*`` (from the BLIP-2 checkpoint) is handled by the caller: it becomes ``post_layernorm``.
    """
    out: Dict[str, torch.Tensor] = {k_hf: sd[k] for k, k_hf in _EVA_SIMPLE.items() if k in sd}
    for i in range(num_layers):
        p = f"blocks.{i}."
        for src, dst in _EVA_BLOCK.items():
            for suffix in ("weight", "bias"):
                k = f"{p}{src}.{suffix}"
                if k in sd:
                    out[f"encoder.layers.{i}.{dst}.{suffix}"] = sd[k]
        qb, vb = sd.get(f"{p}attn.q_bias"), sd.get(f"{p}attn.v_bias")
        if qb is not None and vb is not None:
            out[f"encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat([qb, torch.zeros_like(vb), vb])
    return out


def eva_vit_to_lavis(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`eva_vit_from_lavis` (used by tests to lay out a state dict the original way)."""
    out: Dict[str, torch.Tensor] = {}
    inv_simple = {v: k for k, v in _EVA_SIMPLE.items()}
    inv = {v: k for k, v in _EVA_BLOCK.items()}
    for k, v in sd.items():
        if k in inv_simple:
            out[inv_simple[k]] = v
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
        if not m:
            continue
        i, mod, suffix = m.groups()
        if mod == "self_attn.qkv" and suffix == "bias":
            q, _, vv = v.chunk(3)
            out[f"blocks.{i}.attn.q_bias"] = q
            out[f"blocks.{i}.attn.v_bias"] = vv
        else:
            out[f"blocks.{i}.{inv[mod]}.{suffix}"] = v
    return out


# ---------------------------------------------------------------- trainable part (adapter)
# Original top-level names → our adapter module names.
_ADAPTER_PREFIXES: List[Tuple[str, str]] = [
    ("opt_proj.", "proj."),
    ("llama_proj.", "proj."),
    ("video_Qformer.", "video_qformer."),
    ("other_feat_Qformer.", "other_feat_qformer."),
]
# Keys of the original checkpoints that are not part of the adapter: the (tied) LLM head, the frozen
# image path, and position-id buffers.
_IGNORED = re.compile(r"^(opt_model|llama_model|visual_encoder|ln_vision|Qformer|query_tokens)\b|position_ids$")


def adapter_from_original(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map an original trainable state dict (``checkpoint["model"]``) to our ``adapter.*`` keys.

    Returns (converted, ignored_keys).
    """
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    for k, v in sd.items():
        if _IGNORED.search(k):
            ignored.append(k)
            continue
        new = k
        for src, dst in _ADAPTER_PREFIXES:
            if k.startswith(src):
                new = dst + k[len(src):]
                if dst.endswith("qformer."):
                    inner = qformer_from_lavis(new[len(dst):])
                    if inner is None:
                        ignored.append(k)
                        new = None
                    else:
                        new = dst + inner
                break
        if new is not None:
            out["adapter." + new] = v
    return out, ignored


def adapter_to_original(sd: Dict[str, torch.Tensor], proj_name: str = "opt_proj") -> Dict[str, torch.Tensor]:
    """Inverse of :func:`adapter_from_original`: our ``adapter.*`` keys → the original names."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not k.startswith("adapter."):
            continue
        k = k[len("adapter."):]
        if k.startswith("proj."):
            out[f"{proj_name}." + k[len("proj."):]] = v
        elif k.startswith("video_qformer."):
            out["video_Qformer." + qformer_to_lavis(k[len("video_qformer."):])] = v
        elif k.startswith("other_feat_qformer."):
            out["other_feat_Qformer." + qformer_to_lavis(k[len("other_feat_qformer."):])] = v
        else:
            out[k] = v
    return out


def strip_prefix(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def unwrap_checkpoint(obj, keys: Iterable[str] = ("model", "state_dict")) -> Dict[str, torch.Tensor]:
    """Return the state dict inside an original ``.pth`` (``{"model": sd, ...}``) or the dict itself."""
    if isinstance(obj, dict):
        for k in keys:
            if k in obj and isinstance(obj[k], dict):
                return obj[k]
    return obj
