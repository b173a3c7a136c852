"""Shared-prefix training and generation: encode each boundary's common prefix once.

The three caption types of a boundary share [BOS] + "Video:" + visual tokens + "This video describes
the <label>." (about 55 of ~70 tokens). Here the adapter runs once per boundary, the frozen LLM runs
that prefix once, and each sample's continuation (type prompt tail [+ caption + EOS]) attends to the
prefix's cached keys/values. Results equal :class:`LLMVAGEBC`'s unshared reference path (the same
loss, the same captions) up to float rounding:

* Groups: samples of one batch with the same ``boundary_id`` AND bit-identical inputs (q_tokens /
  frames, ref_points, other_feats) form a group, whatever their order in the batch; anything else is a
  group of one (it still works, just without sharing). Identical inputs are checked so that a pipeline
  with per-sample random frame sampling can never silently change what a sample sees.
* The shared tokens are the longest common prefix of the group's TOKEN IDS of the full prompts (never a
  string split, so BPE merges across the '.' cannot make it differ from the reference), capped so that
  every continuation keeps at least one prompt token (whose logits predict the first caption token).
* Positions: every token keeps exactly the position it has in the reference (prefix 0..Lp-1, the
  continuation from Lp on); padding is masked and never shifts a position.

Training modes (``MODES``), chosen by measurement (default ``"packed"``: at a base-size OPT (768 wide,
12 layers) + full adapter on 2 CPU cores, 12 samples / 4 boundaries, packed 1.6-1.7x and cache 1.35-1.4x
the unshared samples/s; the cache path pays for the per-sample cache gather and a second LLM call):

* ``"cache"``: LLM(prefixes) with ``use_cache=True`` (autograd on), the cache rows are gathered per
  sample (``Cache.batch_select_indices``, differentiable), then LLM(continuations, cache=...). Gradients
  flow back through the cached keys/values into the adapter.
* ``"packed"``: one row per boundary [prefix, cont_1, cont_2, cont_3] with explicit position ids
  restarting after the prefix; each continuation sees the prefix and itself, causally. The attention
  layout goes to the LLM in one of two forms (``ATTENTION_KERNELS``, :func:`packed_attention_kernel`):
  ``"dense"``, a 4-D additive mask (G, 1, L, L) (the reference; it rules out the fused SDPA kernels),
  or ``"flex"``, a ``torch.nn.attention.flex_attention`` ``BlockMask`` built from the same rule, run
  through Hugging Face's ``flex_attention`` implementation (a fused kernel on a GPU that skips the
  masked blocks). ``"auto"`` picks flex on CUDA and dense elsewhere: torch 2.13's flex_attention has
  no backward on CPU ("FlexAttention does not support backward on CPU") and its CPU forward is the
  unfused reference. Flex results equal dense ones (tests: CPU forward; GPU loss and gradients in
  ``benchmarks/run.py --sizes full``).

Loss: the mean token cross-entropy over all caption+EOS tokens of the batch (per token, the
original's Hugging Face mean), as the reference path.

Generation (``models/decoding.py``) uses :func:`build_layout`: each prefix is prefilled once and its
KV cache forked for the prompt tails and beams.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from llmva_gebc.models.llmva_gebc import LLMVAGEBC

log = logging.getLogger(__name__)


def _config_error(msg: str) -> ValueError:
    """A ``ConfigError`` (a ``ValueError``; one error line from the command lines) for a setting that cannot work."""
    from llmva_gebc.config import ConfigError

    return ConfigError(msg)

MODES = ("cache", "packed")
ATTENTION_KERNELS = ("auto", "dense", "flex")
DEFAULT_MODE = "packed"  # measured faster: ~1.65x vs ~1.4x the unshared samples/s at base size (docstring)
INPUT_KEYS = ("q_tokens", "frames", "ref_points", "other_feats")


# ------------------------------------------------------------------------------------ grouping
def find_groups(batch: Dict[str, Any]) -> List[List[int]]:
    """Indices of the batch grouped by boundary: same ``boundary_id`` and identical model inputs.

    Groups are ordered by their first sample; members keep batch order. Without ``boundary_id`` every
    sample is its own group.
    """
    ids = batch.get("boundary_id")
    n = len(batch["prompt"])
    if ids is None:
        return [[i] for i in range(n)]
    tensors = [batch[k] for k in INPUT_KEYS if isinstance(batch.get(k), torch.Tensor)]
    groups: List[List[int]] = []
    open_groups: Dict[Any, List[List[int]]] = {}
    for i, bid in enumerate(ids):
        for g in open_groups.get(bid, []):
            j = g[0]
            if all(torch.equal(t[i], t[j]) for t in tensors):
                g.append(i)
                break
        else:
            g = [i]
            groups.append(g)
            open_groups.setdefault(bid, []).append(g)
    return groups


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token-id sequences, capped at ``min(len) - 1`` so that
    every sequence keeps at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    k = 0
    while k < n and all(s[k] == seqs[0][k] for s in seqs[1:]):
        k += 1
    return max(k, 0)


@dataclass
class Layout:
    """Where every token of a shared-prefix batch goes. G groups, B samples."""

    groups: List[List[int]]
    group_of: torch.Tensor  # (B,) long: group index of each sample
    prefix_embeds: List[torch.Tensor]  # G × (Lp_g, D): [BOS] + "Video:" + visual + shared prompt ids
    tails: List[List[int]]  # B × prompt token ids after the shared part (>= 1 each)
    full_prompt_len: List[int]  # B: the reference path's prefix length (for min_length semantics)

    @property
    def prefix_lens(self) -> List[int]:
        return [int(p.shape[0]) for p in self.prefix_embeds]


def build_layout(model: "LLMVAGEBC", batch: Dict[str, Any]) -> Layout:
    groups = find_groups(batch)
    reps = [g[0] for g in groups]
    sub = {k: batch[k][reps] for k in INPUT_KEYS if isinstance(batch.get(k), torch.Tensor)}
    vis = model.visual_tokens(sub)  # (G, Nv, D): the adapter once per boundary
    head = model._embed([model.bos_id, *model.video_prefix_ids])  # (1+Lv, D)
    B = len(batch["prompt"])
    group_of = torch.empty(B, dtype=torch.long)
    prefix_embeds, tails, full_len = [], [None] * B, [0] * B
    for gi, g in enumerate(groups):
        ids = [model._ids(batch["prompt"][i]) for i in g]
        if min(len(x) for x in ids) == 0:
            raise ValueError(f"empty prompt for boundary {batch['boundary_id'][g[0]]}")
        k = common_prefix_len(ids)
        pre = torch.cat([head, vis[gi], model._embed(ids[0][:k])], dim=0) if k else torch.cat([head, vis[gi]], 0)
        prefix_embeds.append(pre)  # (Lp_g, D)
        for i, x in zip(g, ids):
            group_of[i] = gi
            tails[i] = x[k:]
            full_len[i] = head.shape[0] + vis.shape[1] + len(x)
    return Layout(groups, group_of.to(model.device), prefix_embeds, tails, full_len)


def _left_pad(seqs: List[torch.Tensor], device) -> tuple:
    """G × (L_g, D) → embeds (G, P, D) left-padded, mask (G, P) long, positions (G, P)."""
    P = max(s.shape[0] for s in seqs)
    D = seqs[0].shape[-1]
    emb = seqs[0].new_zeros(len(seqs), P, D)  # (G, P, D)
    mask = torch.zeros(len(seqs), P, dtype=torch.long, device=device)  # (G, P)
    for i, s in enumerate(seqs):
        emb[i, P - s.shape[0]:] = s
        mask[i, P - s.shape[0]:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (G, P): the reference positions, pads at 0
    return emb, mask, pos


def _call_kwargs(llm) -> Dict[str, Any]:
    """Keep the LM head to the last position where supported (the prefix needs no logits)."""
    params = inspect.signature(llm.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def supports_shared_prefix(llm) -> Optional[str]:
    """None when ``llm`` has what the shared path needs, else the reason it does not."""
    try:
        params = set(inspect.signature(llm.forward).parameters)
    except (TypeError, ValueError):
        return "cannot inspect the LLM's forward signature"
    has_kwargs = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(llm.forward).parameters.values())
    base = getattr(llm, "get_base_model", lambda: llm)()  # peft
    for need in ("position_ids", "inputs_embeds", "attention_mask"):
        if need not in params and not has_kwargs:
            return f"{type(base).__name__}.forward has no '{need}' argument"
    if "cache" not in params and "past_key_values" not in params and not has_kwargs:
        return f"{type(base).__name__}.forward takes no KV cache"
    sup = getattr(base, "_supports_default_dynamic_cache", None)
    if callable(sup) and not sup():
        return f"{type(base).__name__} does not use the default dynamic KV cache"
    return None


def _continuations(model: "LLMVAGEBC", lay: Layout, batch: Dict[str, Any]):
    """Per sample: tail + caption + EOS ids, and the index (in it) of the first caption token."""
    conts, starts = [], []
    for i, caption in enumerate(batch["caption"]):
        if caption is None:
            raise ValueError(f"sample {batch.get('boundary_id', ['?'] * (i + 1))[i]} has no caption to train on")
        cap = model.caption_ids(caption)
        conts.append(lay.tails[i] + cap)
        starts.append(len(lay.tails[i]))
    return conts, starts


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token CE in float32 over targets != -100 (the HF causal-LM loss, already shifted)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


# ------------------------------------------------------------------------------------ training
def shared_forward(model: "LLMVAGEBC", batch: Dict[str, Any], mode: str = DEFAULT_MODE,
                   attention: str = "auto") -> Dict[str, torch.Tensor]:
    """The shared-prefix loss. ``mode``: one of ``MODES``; ``attention`` (packed mode): one of
    ``ATTENTION_KERNELS`` (see :func:`packed_attention_kernel`)."""
    if mode not in MODES:
        raise ValueError(f"shared-prefix mode must be one of {MODES}, got {mode!r}")
    lay = build_layout(model, batch)
    conts, starts = _continuations(model, lay, batch)
    if mode == "cache":
        return {"loss": _forward_cache(model, lay, conts, starts)}
    kernel = packed_attention_kernel(attention, model.device, grad=torch.is_grad_enabled())
    return {"loss": _forward_packed(model, lay, conts, starts, kernel)}


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:  # pragma: no cover - torch < 2.5
        return False
    return True


def packed_attention_kernel(requested: str, device, grad: bool = True) -> str:
    """The kernel for the packed layout: ``"dense"`` or ``"flex"``.

    ``requested``: ``"auto"`` (flex on CUDA, dense elsewhere), ``"dense"`` or ``"flex"``. Raises
    ValueError for an unknown name, and for flex on a CPU when gradients are needed (torch 2.13's
    flex_attention has no CPU backward)."""
    if requested not in ATTENTION_KERNELS:
        raise _config_error(f"packed attention (run.share_prefix_attention) must be one of {ATTENTION_KERNELS}, got {requested!r}")
    cuda = torch.device(device).type == "cuda"
    if requested == "auto":
        return "flex" if cuda and flex_available() else "dense"
    if requested == "flex":
        if not flex_available():
            raise _config_error("packed attention 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
        if grad and not cuda:
            raise _config_error(f"packed attention 'flex' cannot train on {torch.device(device).type}: "
                             "flex_attention has no backward there in this torch; use 'dense' or 'auto'")
    return requested


def packed_mask_mod(seg: torch.Tensor):
    """The packed layout's rule as a flex ``mask_mod(b, h, q, kv) -> bool``. ``seg`` (G, L) long: 0 for
    the prefix, k > 0 for continuation k, -1 for padding. A query sees a key when the key is not after
    it and is in the prefix or in the query's own segment; every position sees itself."""

    def mask_mod(b, h, q, kv):
        sq, sk = seg[b, q], seg[b, kv]
        return ((q >= kv) & ((sk == 0) | (sk == sq))) | (q == kv)

    return mask_mod


def dense_packed_mask(seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """seg (G, L) → the additive mask (G, 1, L, L): 0 where :func:`packed_mask_mod` allows, dtype min elsewhere."""
    G, L = seg.shape
    b = torch.arange(G, device=seg.device)[:, None, None]
    q = torch.arange(L, device=seg.device)[None, :, None]
    allowed = packed_mask_mod(seg)(b, 0, q, q.transpose(1, 2))  # (G, L, L) [query, key]
    return torch.zeros(G, 1, L, L, dtype=dtype, device=seg.device).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)


def flex_packed_mask(seg: torch.Tensor):
    """seg (G, L) → a flex_attention ``BlockMask`` of :func:`packed_mask_mod` (blocks wholly masked are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    G, L = seg.shape
    return create_block_mask(packed_mask_mod(seg), B=G, H=None, Q_LEN=L, KV_LEN=L, device=seg.device)


@contextlib.contextmanager
def attention_implementation(llm, impl: Optional[str]):
    """Run ``llm`` with Hugging Face attention implementation ``impl`` (None: unchanged) inside the block."""
    base = getattr(llm, "get_base_model", lambda: llm)()
    prev = base.config._attn_implementation
    if impl is None or impl == prev:
        yield
        return
    base.set_attn_implementation(impl)
    try:
        yield
    finally:
        base.set_attn_implementation(prev)


def _forward_cache(model, lay: Layout, conts, starts) -> torch.Tensor:
    dev = model.device
    pe, pmask, ppos = _left_pad(lay.prefix_embeds, dev)  # (G, P, D), (G, P), (G, P)
    out = model.llm(inputs_embeds=pe, attention_mask=pmask, position_ids=ppos, use_cache=True,
                    **_call_kwargs(model.llm))
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    cache.batch_select_indices(lay.group_of)  # each sample's rows: (B, heads, P, hd), differentiable
    B, C = len(conts), max(len(c) for c in conts)
    pad = model.eos_id
    ids = torch.full((B, C), pad, dtype=torch.long, device=dev)  # (B, C) right-padded
    cmask = torch.zeros(B, C, dtype=torch.long, device=dev)
    tgt = torch.full((B, C), -100, dtype=torch.long, device=dev)  # tgt[j] = token j+1 (pre-shifted)
    for i, (c, s) in enumerate(zip(conts, starts)):
        ids[i, :len(c)] = torch.tensor(c, device=dev)
        cmask[i, :len(c)] = 1
        tgt[i, s - 1:len(c) - 1] = torch.tensor(c[s:], device=dev)
    emb = model.llm.get_input_embeddings()(ids)  # (B, C, D)
    lp = torch.tensor(lay.prefix_lens, device=dev)[lay.group_of]  # (B,)
    pos = lp[:, None] + torch.arange(C, device=dev)[None]  # (B, C)
    mask = torch.cat([pmask[lay.group_of], cmask], dim=1)  # (B, P+C)
    logits = model.llm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, cache=cache,
                       use_cache=True).logits  # (B, C, V)
    return _ce(logits, tgt)


def _forward_packed(model, lay: Layout, conts, starts, kernel: str = "dense") -> torch.Tensor:
    dev = model.device
    G = len(lay.groups)
    rows = [lay.prefix_lens[g] + sum(len(conts[i]) for i in members) for g, members in enumerate(lay.groups)]
    L = max(rows)
    D = lay.prefix_embeds[0].shape[-1]
    emb = lay.prefix_embeds[0].new_zeros(G, L, D)  # (G, L, D) right-padded
    seg = torch.full((G, L), -1, dtype=torch.long, device=dev)  # 0 prefix, k>0 continuation k, -1 pad
    pos = torch.zeros(G, L, dtype=torch.long, device=dev)
    tgt = torch.full((G, L), -100, dtype=torch.long, device=dev)
    embed = model.llm.get_input_embeddings()
    for g, members in enumerate(lay.groups):
        lp = lay.prefix_lens[g]
        emb[g, :lp] = lay.prefix_embeds[g]
        seg[g, :lp] = 0
        pos[g, :lp] = torch.arange(lp, device=dev)
        o = lp
        for k, i in enumerate(members, 1):
            c, s = conts[i], starts[i]
            emb[g, o:o + len(c)] = embed(torch.tensor(c, device=dev))
            seg[g, o:o + len(c)] = k
            pos[g, o:o + len(c)] = lp + torch.arange(len(c), device=dev)
            tgt[g, o + s - 1:o + len(c) - 1] = torch.tensor(c[s:], device=dev)
            o += len(c)
    if kernel == "flex":
        mask, impl = flex_packed_mask(seg), "flex_attention"  # BlockMask over (G, L, L)
    else:
        mask, impl = dense_packed_mask(seg, emb.dtype), None  # (G, 1, L, L) additive
    # Targets start after the shortest prefix: the LM head runs from there on only (the prefix is ~half
    # of a packed row, and at a 13B model's vocab × hidden its logits are a large share of the FLOPs).
    k0 = min(lay.prefix_lens)
    kw = {"logits_to_keep": L - k0} if model._supports_logits_to_keep() else {}
    with attention_implementation(model.llm, impl):
        logits = model.llm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False,
                           **kw).logits  # (G, L-k0, V), or (G, L, V) without logits_to_keep
    return _ce(logits, tgt[:, L - logits.shape[1]:])


__all__ = ["MODES", "DEFAULT_MODE", "ATTENTION_KERNELS", "packed_attention_kernel", "packed_mask_mod",
           "dense_packed_mask", "flex_packed_mask", "attention_implementation", "find_groups", "common_prefix_len", "build_layout", "Layout",
           "supports_shared_prefix", "shared_forward"]
