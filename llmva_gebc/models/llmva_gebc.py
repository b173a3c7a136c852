"""LLMVA-GEBC: frozen image tokens → trainable adapter → frozen causal LM, for boundary captioning.

Sequence layout (one sample), exactly the original's for a batch of one:
    [BOS] + "Video:" + visual tokens (32[+8]) + prompt + caption + EOS
The prompt is "This video describes the <label>.<type prompt>" (built by the data pipeline). Labels
are -100 everywhere but on caption + EOS; the loss is the mean token cross-entropy over all caption
tokens of the batch (per token, as the original's Hugging Face loss).

Unlike the original, which right-pads the prompts in the middle of the sequence (so a sample's loss and
caption depend on its batch-mates), each sample is laid out without inner padding: training pads at
the END of the sequence and generation pads at the START (left), with attention masks and position ids
derived from them. A sample's result therefore equals its batch-of-one result, which is the
original's result for that sample.

The frozen LLM is any ``AutoModelForCausalLM`` in a local directory (optionally a GGUF file); prompt
embeddings go through ``get_input_embeddings()`` so that OPT, LLaMA and others swap by config.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from llmva_gebc.models import decoding
from llmva_gebc.models.adapter import GEBCAdapter
from llmva_gebc.models.decoding import DecodeSettings
from llmva_gebc.models.dtypes import resolve_dtype
from llmva_gebc.models import shared_prefix as sp
from llmva_gebc.config import ConfigError
from llmva_gebc.registry import MODELS

log = logging.getLogger(__name__)

VIDEO_PREFIX = "Video:"


def load_llm(path: str, dtype: torch.dtype, gguf_file: Optional[str] = None, tokenizer_path: Optional[str] = None,
             device: Optional[torch.device | str] = None):
    """Load a frozen causal LM and its tokenizer from a LOCAL directory (no hub access).

    ``from_pretrained`` builds the model without initialising the weights it loads; with a CUDA
    ``device`` the weights go straight onto the card (``device_map``), never through a host copy of
    the whole model."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(
            f"model.llm.path: LLM directory not found: {p}. Point it at a local Hugging Face model "
            "directory (config.json + weights) or a directory holding a .gguf file (model.llm.gguf_file)."
        )
    kw: Dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        if not (p / gguf_file).is_file():
            raise FileNotFoundError(f"model.llm.gguf_file: {p / gguf_file} not found; .gguf files there: "
                                    f"{sorted(x.name for x in p.glob('*.gguf'))}")
        kw["gguf_file"] = gguf_file
    tok_dir = tokenizer_path or str(p)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, **kw)
    if device is not None and torch.device(device).type == "cuda" and not gguf_file:
        kw["device_map"] = {"": torch.device(device)}
    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype, **kw)
    return model, tokenizer


class LLMVAGEBC(nn.Module):
    """The whole captioner. Frozen: the LLM (and the image encoder, when built). Trainable: the adapter
    (and LoRA weights on the LLM, when enabled)."""

    def __init__(self, adapter: GEBCAdapter, llm: nn.Module, tokenizer, max_txt_len: int = 30,
                 generation: Optional[Dict[str, Any]] = None, encoder: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.adapter = adapter
        self.llm = llm
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_txt_len = max_txt_len
        self.generation = dict(generation or {})
        DecodeSettings.build(self.generation)  # a bad model.generation fails here, not at the first caption
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("the LLM tokenizer (model.llm.path / tokenizer_path) has no eos_token; set one in its "
                              "tokenizer_config.json")
        self.eos_id = eos
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        self._text_cache: Dict[str, List[int]] = {}
        self.video_prefix_ids = self._ids(VIDEO_PREFIX)
        self.share_prefix = False  # default of forward/generate(share_prefix=None); see set_share_prefix
        self.share_prefix_mode = "packed"  # shared-prefix training: "packed" | "cache" (models/shared_prefix.py)
        self.packed_attention = "auto"  # packed mode's kernel: "auto" | "dense" | "flex" (models/shared_prefix.py)
        for p in self.llm.parameters():
            if not getattr(p, "_llmva_trainable", False):
                p.requires_grad_(False)
        self.llm.eval()

    # ------------------------------------------------------------------ housekeeping
    def train(self, mode: bool = True) -> "LLMVAGEBC":
        """The adapter (and LoRA dropout) follow ``mode``; the frozen LLM and encoder stay in eval mode
        (no dropout). The original left the frozen OPT's dropout active during training; we do not."""
        super().train(mode)
        self.llm.eval()
        for name, module in self.llm.named_modules():  # LoRA's dropout is part of what is trained
            if name.endswith("lora_dropout") or ".lora_dropout." in name:
                module.train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.adapter.proj.weight.device

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def trainable_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        names = {n for n, _ in self.trainable_parameters()}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, sd: Dict[str, torch.Tensor], strict: bool = True) -> Tuple[List[str], List[str]]:
        """Load trainable weights, all or nothing. Returns (missing, unexpected).

        Every key (with ``strict``) and every shape is checked before any tensor is copied, so a
        checkpoint that does not fit (another LLM hidden size, another adapter) raises ``KeyError`` /
        ``ValueError`` and leaves the model untouched."""
        from llmva_gebc.models.checkpoint import check_shapes

        expected = {n for n, _ in self.trainable_parameters()}
        missing = sorted(expected - set(sd))
        unexpected = sorted(set(sd) - expected)
        if strict and (missing or unexpected):
            raise KeyError(f"trainable state dict mismatch: missing {missing}, unexpected {unexpected}")
        own = dict(self.named_parameters())
        check_shapes({k: own[k] for k in expected}, sd)
        with torch.no_grad():
            for k, v in sd.items():
                if k in expected:
                    own[k].copy_(v.to(own[k].dtype))
        return missing, unexpected

    # ------------------------------------------------------------------ shared prefix
    def set_share_prefix(self, enabled: bool, mode: Optional[str] = None, attention: Optional[str] = None) -> bool:
        """Set the default of ``forward``/``generate(share_prefix=None)`` (config ``run.share_prefix``),
        and optionally the training ``mode`` and the packed mode's ``attention`` kernel
        (``run.share_prefix_attention``: auto | dense | flex). Falls back to the unshared path, with a
        warning, when the LLM lacks what sharing needs. Returns the value in effect."""
        if mode is not None:
            if mode not in sp.MODES:
                raise ValueError(f"shared-prefix mode must be one of {sp.MODES}, got {mode!r}")
            self.share_prefix_mode = mode
        if attention is not None:
            if attention not in sp.ATTENTION_KERNELS:
                raise ConfigError(f"run.share_prefix_attention must be one of {sp.ATTENTION_KERNELS}, got {attention!r}")
            self.packed_attention = attention
        why = sp.supports_shared_prefix(self.llm) if enabled else None
        if why is not None:
            log.warning("run.share_prefix: true but %s; using the unshared path", why)
            enabled = False
        self.share_prefix = bool(enabled)
        return self.share_prefix

    def _sharing(self, share_prefix: Optional[bool]) -> bool:
        if share_prefix is None:
            return self.share_prefix
        if share_prefix and not self.share_prefix:
            why = sp.supports_shared_prefix(self.llm)
            if why is not None:
                raise ConfigError(f"run.share_prefix=true is not possible with this LLM: {why}")
        return bool(share_prefix)

    # ------------------------------------------------------------------ text
    def _ids(self, text: str) -> List[int]:
        """Token ids of a fixed string, tokenised once (prompts repeat across the whole split)."""
        ids = self._text_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            self._text_cache[text] = ids
        return ids

    def caption_ids(self, caption: str) -> List[int]:
        """caption + EOS, truncated to ``max_txt_len`` AFTER the EOS is appended (the original's quirk:
        a caption of >= max_txt_len tokens has no EOS target)."""
        ids = self.tokenizer(caption, add_special_tokens=False).input_ids + [self.eos_id]
        return ids[: self.max_txt_len]

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        t = torch.tensor(list(ids), dtype=torch.long, device=self.device)
        return self.llm.get_input_embeddings()(t)  # (L, D)

    # ------------------------------------------------------------------ visual
    def visual_tokens(self, batch: Dict[str, Any]) -> torch.Tensor:
        """batch → visual tokens (B, Nv, D) in the LLM's dtype."""
        if "q_tokens" in batch:
            q = batch["q_tokens"].to(self.device)  # (B, T, Q, H)
        elif "frames" in batch:
            if self.encoder is None:
                raise ValueError("batch has raw 'frames' but the model has no image encoder "
                                 "(set model.use_encoder: true)")
            frames = batch["frames"].to(self.device)  # (B, T, 3, S, S)
            B, T = frames.shape[:2]
            q = self.encoder(frames.flatten(0, 1)).reshape(B, T, *self.encoder.query_tokens.shape[1:])  # (B, T, Q, H)
        else:
            raise KeyError("batch needs 'q_tokens' (pre-extracted features) or 'frames' (raw video)")
        ref = batch["ref_points"].to(self.device)  # (B, 2) float64
        other = batch.get("other_feats")
        if other is not None:
            other = other.to(self.device)  # (B, S, sum_d)
        return self.adapter(q, ref, other).to(self.llm_dtype)  # (B, Nv, D)

    def _prefix(self, vis: torch.Tensor, prompt: str) -> torch.Tensor:
        """[BOS] + "Video:" + visual + prompt embeddings for one sample: (Lp, D)."""
        head = self._embed([self.bos_id, *self.video_prefix_ids])  # (1+Lv, D)
        return torch.cat([head, vis, self._embed(self._ids(prompt))], dim=0)  # (Lp, D)

    # ------------------------------------------------------------------ training
    def forward(self, batch: Dict[str, Any], share_prefix: Optional[bool] = None) -> Dict[str, torch.Tensor]:
        """``share_prefix`` (None → ``self.share_prefix``): encode each boundary's common prefix once
        (``models/shared_prefix.py``); the same loss as the reference path below."""
        if self._sharing(share_prefix):
            return sp.shared_forward(self, batch, self.share_prefix_mode, self.packed_attention)
        vis = self.visual_tokens(batch)  # (B, Nv, D)
        seqs, labels = [], []
        for i, (prompt, caption) in enumerate(zip(batch["prompt"], batch["caption"])):
            if caption is None:
                raise ValueError(f"sample {batch.get('boundary_id', ['?'] * (i + 1))[i]} has no caption to train on")
            prefix = self._prefix(vis[i], prompt)  # (Lp, D)
            cap = self.caption_ids(caption)
            seqs.append(torch.cat([prefix, self._embed(cap)], dim=0))  # (Lp+Lc, D)
            labels.append([-100] * prefix.shape[0] + cap)
        L = max(s.shape[0] for s in seqs)
        B, D = len(seqs), vis.shape[-1]
        embeds = vis.new_zeros(B, L, D)  # (B, L, D), right-padded at the END of the sequence
        attn = torch.zeros(B, L, dtype=torch.long, device=self.device)
        tgt = torch.full((B, L), -100, dtype=torch.long, device=self.device)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            embeds[i, : s.shape[0]] = s
            attn[i, : s.shape[0]] = 1
            tgt[i, : len(lab)] = torch.tensor(lab, device=self.device)
        return {"loss": self.caption_loss(embeds, attn, tgt)}

    def caption_loss(self, embeds: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy over the labelled positions (per token, as Hugging Face's loss).

        The LM head only runs from the first position that predicts a caption token on
        (``logits_to_keep``): the prefix (BOS, "Video:", visual tokens, prompt) is most of the sequence
        and its logits were a fifth of a base-size step's FLOPs and most of its peak memory.
        """
        L = labels.shape[1]
        labelled = (labels != -100).any(dim=0).nonzero()
        start = max(int(labelled[0]) - 1, 0) if len(labelled) else L - 1  # first position with a target
        if not self._supports_logits_to_keep():
            return self.llm(inputs_embeds=embeds, attention_mask=attn, labels=labels, use_cache=False).loss
        logits = self.llm(inputs_embeds=embeds, attention_mask=attn, use_cache=False,
                          logits_to_keep=L - start).logits  # (B, L-start, V): positions start..L-1
        targets = labels[:, start + 1:]  # (B, L-start-1): the token after each kept position
        return nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                           targets.reshape(-1), ignore_index=-100)

    def _supports_logits_to_keep(self) -> bool:
        if not hasattr(self, "_logits_to_keep_ok"):
            import inspect

            base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
            self._logits_to_keep_ok = "logits_to_keep" in inspect.signature(base.forward).parameters
        return self._logits_to_keep_ok

    # ------------------------------------------------------------------ generation
    def decode_settings(self, **overrides) -> DecodeSettings:
        """``model.generation`` plus call overrides (see :class:`~llmva_gebc.models.decoding.DecodeSettings`;
        ``max_length`` counts the original's dummy start column, ``max_new_tokens=n`` means ``n + 1``)."""
        return DecodeSettings.build(self.generation, **overrides)

    @torch.no_grad()
    def generate(self, batch: Dict[str, Any], share_prefix: Optional[bool] = None, **overrides) -> List[str]:
        """One caption per sample: transformers 4.28.0's search for that sample alone (the original's
        result), whatever its batch-mates (``models/decoding.py``). ``share_prefix`` (None →
        ``self.share_prefix``): prefill each boundary's common prefix once and fork its KV cache for
        the prompt tails and beams (the same captions)."""
        s = self.decode_settings(**overrides)
        share = self._sharing(share_prefix)
        if s.backend == "hf":
            return decoding.hf_generate(self, batch, share, s)
        if share:
            lay = sp.build_layout(self, batch)
            tails = [self._embed(t) for t in lay.tails]  # B × (Lt, D)
            ids = decoding.generate_ids_shared(self.llm, lay.prefix_embeds, lay.group_of.tolist(), tails, s,
                                               self.eos_id, self.bos_id)
        else:
            vis = self.visual_tokens(batch)  # (B, Nv, D)
            prompts = [self._prefix(vis[i], p) for i, p in enumerate(batch["prompt"])]  # B × (Lp, D)
            ids = decoding.generate_ids(self.llm, prompts, s, self.eos_id, self.bos_id)
        return decoding.decode_text(self.tokenizer, ids)


# ---------------------------------------------------------------------- builder
def build_adapter(acfg, llm_hidden_size: int) -> GEBCAdapter:
    return GEBCAdapter(
        llm_hidden_size=llm_hidden_size, hidden_size=acfg.hidden_size,
        num_attention_heads=acfg.num_attention_heads, intermediate_size=acfg.intermediate_size,
        num_layers=acfg.num_layers, num_query_tokens=acfg.num_query_tokens, max_frame_pos=acfg.max_frame_pos,
        layer_norm_eps=acfg.layer_norm_eps, hidden_dropout_prob=acfg.hidden_dropout_prob,
        attention_probs_dropout_prob=acfg.attention_probs_dropout_prob, initializer_range=acfg.initializer_range,
        other_feat_dims=[int(f.dim) for f in acfg.other_feats], other_num_query_tokens=acfg.other_num_query_tokens,
        other_max_pos=acfg.other_max_pos,
    )


def _apply_lora(llm: nn.Module, lcfg) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                          target_modules=list(lcfg.target_modules), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(llm, peft_cfg)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p._llmva_trainable = True  # survives LLMVAGEBC's freezing of the LLM
    return model


@MODELS.register("llmva_gebc")
def build_llmva_gebc(mcfg, device: Optional[torch.device | str] = None) -> LLMVAGEBC:
    """Build the captioner from ``model:`` config; loads ``model.checkpoint`` if set."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if mcfg.encoder.weights != "hf" and mcfg.encoder.qformer.hidden_size != mcfg.adapter.hidden_size:
        raise ConfigError(
            f"model.adapter.hidden_size ({mcfg.adapter.hidden_size}) must equal the image Q-Former width "
            f"model.encoder.qformer.hidden_size ({mcfg.encoder.qformer.hidden_size}): the adapter reads its tokens")
    llm, tokenizer = load_llm(mcfg.llm.path, resolve_dtype(mcfg.llm.dtype, dev, "model.llm.dtype"),
                              mcfg.llm.gguf_file, mcfg.llm.tokenizer_path, device=dev)
    if mcfg.llm.lora.enabled:
        llm = _apply_lora(llm, mcfg.llm.lora)
    adapter = build_adapter(mcfg.adapter, llm.get_input_embeddings().weight.shape[1])
    encoder = None
    if mcfg.use_encoder:
        from llmva_gebc.models.encoder import build_encoder

        encoder = build_encoder(mcfg.encoder, device=dev)  # a checkpoint is materialised there directly
    model = LLMVAGEBC(adapter, llm, tokenizer, max_txt_len=mcfg.max_txt_len,
                      generation=dict(mcfg.generation), encoder=encoder)
    model.to(dev)
    if encoder is not None:  # .to() above may have moved the ViT back to fp32
        encoder.set_precision(resolve_dtype(mcfg.encoder.precision, dev, "model.encoder.precision"))
    if mcfg.checkpoint:
        from llmva_gebc.models.checkpoint import load_trainable

        load_trainable(model, mcfg.checkpoint, allow_partial=mcfg.allow_partial_load)
    return model
