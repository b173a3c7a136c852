"""Analytic matmul FLOP counts for the benchmark's "physical limit" columns.

Every matmul of an (m×k)·(k×n) product costs 2·m·n·k FLOPs; layer norms, softmax, GELU, embedding
look-ups and the optimizer are not counted (they are memory-bound and small next to the matmuls).
Counts follow the shapes the code actually executes: padded batches (rows × longest sequence), dense
attention over every key (an additive/causal mask does not skip work in the dense kernels), the LM
head on the positions whose logits are computed. ``FORMULAS`` is the text written into results.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

FORMULAS = """\
Matmul FLOPs only, counted from shapes: an (m×k)·(k×n) product is 2·m·n·k. Not counted: norms,
softmax, activations, embeddings, the optimizer. Shapes are the executed ones (padded batch, dense
attention over all keys, LM head on the positions whose logits are computed).

* **Frozen LLM** (hidden D, L layers, FFN F, vocab V, K/V width Dkv = D·kv_heads/heads), one forward of
  n query tokens attending to c keys, with logits on g positions:
  `L·[2n·D·(D+2·Dkv) + 2n·D² + 2n·c·D·2 + m·2n·D·F] + 2g·D·V` (m = 2 matrices for OPT's FFN, 3 for
  gated LLaMA-style MLPs).
* **Adapter** (Q-Former, width H, FFN Fa, nq queries over M = T·Q frame tokens, per layer):
  self-attention `8·nq·H² + 4·nq²·H`, cross-attention `4·nq·H² + 4·M·H² + 4·nq·M·H`, query FFN
  `4·nq·H·Fa`; plus the boundary projection `2·H²` and the LLM projection `2·nq·H·D`.
* **Image encoder** (raw-video path and extraction; ViT width W, FFN Fv, N = patches+1 tokens):
  patch embedding `2·P·3·p²·W`, per layer `8·N·W² + 4·N²·W + 4·N·W·Fv`; image Q-Former as the adapter
  with cross-attention (keys from W-wide tokens: `4·N·W·H`) every `cross_attention_frequency` layers.
* **Training step** = adapter `3×` forward (forward + backward with weight gradients) + frozen LLM
  `2×` forward (forward + activation-gradient backward, no weight gradients) [+ encoder `1×` forward,
  raw-video path, no gradients]. Unshared: one LLM row per sample, B × L_max tokens, logits from the
  first position that predicts a caption token on (`logits_to_keep`: L_max − min prompt length + 1
  positions per row). Shared prefix, `packed` mode (the default): G boundary rows, each the prefix
  followed by its samples' continuations (prompt tail + caption + EOS), padded to R_max tokens, dense
  attention over R_max keys, logits on R_max − P_min positions; `cache` mode: G prefix rows × P_max
  tokens (logits on 1) + B continuation rows × C_max tokens over P_max + C_max keys (logits on C_max).
  Either way the adapter runs G times instead of B.
* **Generation** (beam width k, N new tokens): adapter forward; prefill of B·k rows × L_max tokens
  (Hugging Face expands the inputs by k before the first forward; logits on the last position only),
  then N−1 decode forwards of B·k rows × 1 token over L_max + t keys. Shared prefix: G rows × P_max
  prefix once, then B·k rows × T_max tail tokens over P_max + T_max keys, then the N−1 decode steps.
* **FLOPs per sample** = FLOPs of the measured call / samples (or captions) in it. **Achieved
  FLOP/s** = FLOPs per sample × samples/s. **Ratio** = achieved / measured matmul FLOP/s of the same
  dtype (one large square matmul, median of several)."""


@dataclass(frozen=True)
class LLMShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    gated_mlp: bool  # LLaMA-style (gate, up, down) instead of OPT's (fc1, fc2)

    @classmethod
    def from_config(cls, c) -> "LLMShape":
        gated = getattr(c, "model_type", "") not in ("opt", "gpt2", "gpt_neox")
        ffn = getattr(c, "ffn_dim", None) or getattr(c, "intermediate_size", None)
        heads = c.num_attention_heads
        return cls(hidden=c.hidden_size, layers=c.num_hidden_layers, heads=heads,
                   kv_heads=getattr(c, "num_key_value_heads", None) or heads, ffn=int(ffn),
                   vocab=c.vocab_size, gated_mlp=gated)


def llm_forward(s: LLMShape, rows: int, n: int, ctx: int, logits: int) -> float:
    """One forward: ``rows`` sequences of ``n`` new tokens over ``ctx`` keys, LM head on ``logits`` positions each."""
    D, kv = s.hidden, s.hidden * s.kv_heads // s.heads
    proj = 2 * n * D * (D + 2 * kv) + 2 * n * D * D
    attn = 2 * 2 * n * ctx * D
    mlp = (3 if s.gated_mlp else 2) * 2 * n * D * s.ffn
    return rows * (s.layers * (proj + attn + mlp) + 2 * logits * D * s.vocab)


def qformer_forward(nq: int, mem: int, H: int, F: int, layers: int, mem_width: int,
                    cross_every: int = 1) -> float:
    """BLIP-2 style Q-Former over ``nq`` queries with cross-attention to ``mem`` tokens of width ``mem_width``."""
    total = 0.0
    for i in range(layers):
        total += 8 * nq * H * H + 4 * nq * nq * H  # self-attention
        if i % cross_every == 0:
            total += 4 * nq * H * H + 4 * mem * mem_width * H + 4 * nq * mem * H  # cross-attention
        total += 4 * nq * H * F  # query FFN
    return total


def adapter_forward(acfg, T: int, Q: int, D: int, other_steps: int = 0) -> float:
    """One sample through the trainable adapter (``model.adapter`` config), visual tokens → LLM width D."""
    H, F, L = acfg.hidden_size, acfg.intermediate_size, acfg.num_layers
    nq = acfg.num_query_tokens
    f = 2 * H * H + qformer_forward(nq, T * Q, H, F, L, H) + 2 * nq * H * D
    dims = [int(o.dim) for o in acfg.other_feats]
    if dims:
        no = acfg.other_num_query_tokens
        f += 2 * other_steps * sum(dims) * H + 2 * H * H + qformer_forward(no, other_steps, H, F, L, H) + 2 * no * H * D
    return f


def encoder_forward(ecfg) -> float:
    """One frame through the frozen image path (``model.encoder`` config: ViT + image Q-Former)."""
    v, q = ecfg.vision, ecfg.qformer
    P = (v.image_size // v.patch_size) ** 2
    N, W = P + 1, v.hidden_size
    f = 2 * P * 3 * v.patch_size ** 2 * W
    f += v.num_hidden_layers * (8 * N * W * W + 4 * N * N * W + 4 * N * W * v.intermediate_size)
    f += qformer_forward(ecfg.num_query_tokens, N, q.hidden_size, q.intermediate_size, q.num_hidden_layers, W,
                         q.cross_attention_frequency)
    return f


# ------------------------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Tokens:
    """Token layout of one batch, as the model lays it out (see ``benchmarks/workload.py``)."""

    batch: int  # B samples
    groups: int  # G boundaries (shared prefix)
    full_len: Sequence[int]  # B: prompt length (BOS + "Video:" + visual + prompt) per sample
    cap_len: Sequence[int]  # B: caption + EOS tokens per sample (training)
    prefix_len: Sequence[int]  # G: shared prefix length per boundary
    tail_len: Sequence[int]  # B: prompt tokens after the shared prefix per sample
    members: Sequence[Sequence[int]] = ()  # G: the samples of each boundary group (default: one group, or one each)

    @property
    def group_members(self) -> List[List[int]]:
        if self.members:
            return [list(m) for m in self.members]
        if self.groups == 1:
            return [list(range(self.batch))]
        if self.groups == self.batch:
            return [[i] for i in range(self.batch)]
        raise ValueError(f"Tokens: {self.groups} groups of {self.batch} samples need ``members``")

    @property
    def unshared_tokens(self) -> int:
        return self.batch * max(p + c for p, c in zip(self.full_len, self.cap_len))

    @property
    def shared_tokens(self) -> int:
        return self.groups * max(self.prefix_len) + self.batch * max(t + c for t, c in zip(self.tail_len, self.cap_len))


def train_step(s: LLMShape, tok: Tokens, adapter_fwd: float, shared: bool, encoder_fwd: float = 0.0,
               mode: str = "packed") -> float:
    """FLOPs of one training step (whole batch), as :mod:`llmva_gebc.models.shared_prefix` runs it.

    ``encoder_fwd``: per-sample encoder FLOPs (raw video). ``mode``: the shared-prefix training mode,
    ``"packed"`` (the default) or ``"cache"``; ignored when ``shared`` is False."""
    B, G = tok.batch, tok.groups
    if not shared:
        L = max(p + c for p, c in zip(tok.full_len, tok.cap_len))
        llm = llm_forward(s, B, L, L, L - min(tok.full_len) + 1)
        n_vis = B
    elif mode == "packed":
        R = max(p + sum(tok.tail_len[i] + tok.cap_len[i] for i in m)
                for p, m in zip(tok.prefix_len, tok.group_members))
        llm = llm_forward(s, G, R, R, R - min(tok.prefix_len))
        n_vis = G
    elif mode == "cache":
        P = max(tok.prefix_len)
        C = max(t + c for t, c in zip(tok.tail_len, tok.cap_len))
        llm = llm_forward(s, G, P, P, 1) + llm_forward(s, B, C, P + C, C)
        n_vis = G
    else:
        raise ValueError(f"mode must be 'packed' or 'cache', got {mode!r}")
    return 3 * adapter_fwd * n_vis + 2 * llm + encoder_fwd * n_vis


def generate_call(s: LLMShape, tok: Tokens, adapter_fwd: float, beams: int, new_tokens: int, shared: bool,
                  expand_first: bool = True) -> float:
    """FLOPs of one ``model.generate`` call producing exactly ``new_tokens`` per caption.
    ``expand_first``: the prompt (tails) run once per beam, as transformers' ``generate`` does; False:
    once per sample, the KV cache then copied per beam (the project's decoder, ``models/decoding.py``)."""
    B, G, k = tok.batch, tok.groups, beams
    rows = B * k if expand_first else B
    if not shared:
        L = max(tok.full_len)
        f = adapter_fwd * B + llm_forward(s, rows, L, L, 1)
        start = L
    else:
        P, T = max(tok.prefix_len), max(tok.tail_len)
        f = adapter_fwd * G + llm_forward(s, G, P, P, 1) + llm_forward(s, rows, T, P + T, 1)
        start = P + T
    for t in range(1, new_tokens):
        f += llm_forward(s, B * k, 1, start + t, 1)
    return f


def matmul(n: int) -> float:
    return 2.0 * n ** 3
