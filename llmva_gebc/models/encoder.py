"""The frozen image path: EVA-ViT-g/14 + ``ln_vision`` + BLIP-2 Q-Former → (32, H) tokens per frame.

``transformers.Blip2VisionModel`` is the EVA-ViT-g network (its ``post_layernorm`` plays BLIP-2's
``ln_vision``) and ``transformers.Blip2QFormerModel`` the BLIP-2 Q-Former; nothing is vendored.
Weights come from the original LAVIS files (``eva_vit_g.pth`` + ``blip2_pretrained_*.pth``) through
the key converter in :mod:`llmva_gebc.models.keymaps`, from a Hugging Face BLIP-2 directory, or are
random (seeded) for tests and the synthetic demo.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

from llmva_gebc.config import ConfigError
from llmva_gebc.models import keymaps
from llmva_gebc.models.dtypes import resolve_dtype

log = logging.getLogger(__name__)


class FrozenImageEncoder(nn.Module):
    """frames (N, 3, S, S) → image Q-Former tokens (N, Q, H). Always frozen, always in eval mode."""

    def __init__(self, vision_config: Blip2VisionConfig, qformer_config: Blip2QFormerConfig,
                 num_query_tokens: int = 32) -> None:
        super().__init__()
        self.vision = Blip2VisionModel(vision_config)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_config.hidden_size))
        nn.init.normal_(self.query_tokens, std=qformer_config.initializer_range)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenImageEncoder":  # frozen: dropout stays off
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.query_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.embeddings.patch_embedding.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.query_tokens.shape[-1]

    def set_precision(self, dtype: torch.dtype) -> None:
        """ViT trunk in ``dtype`` (LAVIS' fp16 ViT); ``ln_vision`` and the Q-Former stay fp32."""
        self.vision.embeddings.to(dtype)
        self.vision.encoder.to(dtype)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.device, self.dtype)  # (N, 3, S, S)
        img = self.vision.embeddings(frames)  # (N, 1+P, Wv)
        img = self.vision.encoder(inputs_embeds=img).last_hidden_state  # (N, 1+P, Wv)
        img = self.vision.post_layernorm(img.float())  # ln_vision, fp32: (N, 1+P, Wv)
        queries = self.query_tokens.expand(img.shape[0], -1, -1)  # (N, Q, H)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=img)
        return out.last_hidden_state  # (N, Q, H)


def _vision_config(cfg) -> Blip2VisionConfig:
    return Blip2VisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, layer_norm_eps=cfg.layer_norm_eps,
        initializer_range=cfg.initializer_range, qkv_bias=True,
    )


def _qformer_config(cfg, encoder_hidden_size: int) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        cross_attention_frequency=cfg.cross_attention_frequency, encoder_hidden_size=encoder_hidden_size,
        layer_norm_eps=cfg.layer_norm_eps, initializer_range=cfg.initializer_range,
    )


def _load_pth(path: str, what: str) -> Dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p} (set model.encoder.{what})")
    try:  # memory-mapped: tensors are read straight into the parameters they are copied to
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) torch.save format cannot be mapped
        obj = torch.load(p, map_location="cpu", weights_only=True)
    return keymaps.unwrap_checkpoint(obj)


def load_lavis_weights(enc: FrozenImageEncoder, eva_vit_path: str, qformer_path: str) -> None:
    """Load ``eva_vit_g.pth`` and ``blip2_pretrained_*.pth`` (LAVIS layout) into ``enc``, strictly."""
    vit_sd = _load_pth(eva_vit_path, "eva_vit_path")
    n_layers = len(enc.vision.encoder.layers)
    vision = keymaps.eva_vit_from_lavis(vit_sd, n_layers)
    blip = _load_pth(qformer_path, "qformer_path")
    for k in ("weight", "bias"):
        if f"ln_vision.{k}" in blip:
            vision[f"post_layernorm.{k}"] = blip[f"ln_vision.{k}"]
    _strict_load(enc.vision, vision, f"{eva_vit_path} + ln_vision of {qformer_path}")
    qf = {}
    for k, v in keymaps.strip_prefix(blip, "Qformer.").items():
        nk = keymaps.qformer_from_lavis(k)
        if nk is not None:
            qf[nk] = v
    _strict_load(enc.qformer, qf, qformer_path)
    if "query_tokens" not in blip:
        raise KeyError(f"{qformer_path}: missing key 'query_tokens'")
    enc.query_tokens.data.copy_(blip["query_tokens"])


def load_hf_blip2_weights(enc: FrozenImageEncoder, hf_dir: str) -> None:
    """Load ``vision_model.*``, ``qformer.*`` and ``query_tokens`` from a HF BLIP-2 checkpoint directory."""
    from safetensors import safe_open

    d = Path(hf_dir)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        bins = sorted(d.glob("pytorch_model*.bin"))
        if not bins:
            raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin in {d}")
        sd: Dict[str, torch.Tensor] = {}
        for b in bins:
            sd.update(torch.load(b, map_location="cpu", weights_only=True))
    else:
        sd = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    if k.startswith(("vision_model.", "qformer.", "query_tokens")):
                        sd[k] = fh.get_tensor(k)
    _strict_load(enc.vision, keymaps.strip_prefix(sd, "vision_model."), str(d))
    _strict_load(enc.qformer, keymaps.strip_prefix(sd, "qformer."), str(d))
    if "query_tokens" not in sd:
        raise KeyError(f"{d}: missing key 'query_tokens'")
    enc.query_tokens.data.copy_(sd["query_tokens"])


def _strict_load(module: nn.Module, sd: Dict[str, torch.Tensor], source: str) -> None:
    res = module.load_state_dict(sd, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("position_ids")]
    if missing or res.unexpected_keys:
        raise KeyError(
            f"{source}: cannot load into {type(module).__name__}: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {res.unexpected_keys[:10]}"
        )


def hf_blip2_configs(hf_dir: str):
    """Read vision/Q-Former configs from a HF BLIP-2 ``config.json`` (so sizes need not be repeated)."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    return Blip2VisionConfig(**cfg["vision_config"]), Blip2QFormerConfig(**cfg["qformer_config"]), cfg.get("num_query_tokens", 32)


def build_encoder(cfg, device: Optional[torch.device | str] = None) -> FrozenImageEncoder:
    """Build the frozen image path from ``model.encoder`` config (weights: none | lavis | hf).

    ``device``: where the parameters live (default CPU). The ViT trunk is in ``model.encoder.precision``
    (fp16 on CPU means fp32, see :func:`resolve_dtype`); ``ln_vision`` and the Q-Former are fp32. With
    weights from a checkpoint nothing is randomly initialised and each tensor is allocated once, on
    ``device``, in its final dtype.

    Raises ``ValueError`` for a bad ``weights``/``precision`` or a missing path key,
    ``FileNotFoundError`` for a missing checkpoint file, ``KeyError`` when a checkpoint does not fit
    (missing or unexpected keys, listed).
    """
    if cfg.weights == "hf":
        if not cfg.hf_dir:
            raise ConfigError("model.encoder.weights=hf needs model.encoder.hf_dir")
        vcfg, qcfg, nq = hf_blip2_configs(cfg.hf_dir)
    else:
        vcfg = _vision_config(cfg.vision)
        qcfg = _qformer_config(cfg.qformer, encoder_hidden_size=cfg.vision.hidden_size)
        nq = cfg.num_query_tokens
    if cfg.weights not in ("none", "lavis", "hf"):
        raise ConfigError(f"model.encoder.weights must be one of none, lavis, hf; got {cfg.weights!r}")
    if cfg.weights == "lavis" and not (cfg.eva_vit_path and cfg.qformer_path):
        raise ConfigError("model.encoder.weights=lavis needs model.encoder.eva_vit_path and model.encoder.qformer_path")
    device = torch.device(device if device is not None else "cpu")
    dtype = resolve_dtype(cfg.precision, device, what="model.encoder.precision")
    if cfg.weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # random weights are a function of the config alone
            enc = FrozenImageEncoder(vcfg, qcfg, nq)
        enc.to(device)
        enc.set_precision(dtype)
        return enc
    # Weights from a checkpoint: build the structure on the meta device (no random initialisation that
    # the load would overwrite: ~1.1 G parameters at full size, ~20 s on a quiet CPU core, ~70 s on a
    # busy one), give each part its final dtype while it is still meta (ViT trunk in ``precision``,
    # ``ln_vision`` and the Q-Former fp32), allocate it uninitialised on the target device, then copy
    # every tensor in: an fp16 checkpoint goes straight into fp16 parameters on a GPU, with no fp32
    # copy anywhere. The strict load (every key present, none unexpected) guarantees that nothing is
    # left uninitialised.
    with torch.device("meta"):
        enc = FrozenImageEncoder(vcfg, qcfg, nq)
    enc.set_precision(dtype)
    enc.to_empty(device=device)
    if cfg.weights == "lavis":
        load_lavis_weights(enc, cfg.eva_vit_path, cfg.qformer_path)
    else:
        load_hf_blip2_weights(enc, cfg.hf_dir)
    with torch.no_grad():  # index buffers a checkpoint may leave out (_strict_load allows that)
        for name, buf in enc.named_buffers():
            if name.endswith("position_ids"):
                buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))
    return enc
