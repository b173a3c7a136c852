"""Caption decoding owned by the project: transformers 4.28.0's greedy and beam search, per sample.

LLMVA-GEBC's captions come from ``llm.generate(inputs_embeds=..., attention_mask=..., num_beams=k,
max_length=30, min_length=1, repetition_penalty, length_penalty, do_sample=False)`` under transformers
4.28.0, one sample at a time. This module reproduces that call for a batch of one, for every row of any
batch, over any Hugging Face causal LM that takes ``inputs_embeds``, ``position_ids`` and a KV cache.
The rules, read from 4.28.0's ``generation/utils.py``, ``beam_search.py`` and ``logits_process.py``
and checked against golden vectors made by that version (``tools/golden_generate_428.py``):

* **Dummy start column.** From ``inputs_embeds``, the output ids start with one column holding the BOS
  id; it counts in every length: ``max_length`` (so ``max_length=30`` allows 29 new tokens), the
  current length ``cur_len`` seen by ``min_length`` (EOS is forbidden while ``cur_len < min_length``),
  and the length that normalises a hypothesis' score. The repetition penalty also sees it.
* **Scores.** Greedy: the processors act on the raw logits, then argmax. Beam search: log-softmax (in
  the logits' dtype), the processors, plus the running beam score (float32); the top ``2k`` of the
  ``k·V`` candidates, in order: an EOS candidate of rank ``< k`` becomes a finished hypothesis (its ids
  without the EOS, score ``sum_logprobs / len(ids) ** length_penalty``), the first ``k`` others are
  the next beams. Repetition penalty: a score ``s`` of a token already in the ids becomes ``s · p`` if
  ``s < 0`` else ``s / p``.
* **Hypotheses.** At most ``k`` per sample, kept as 4.28's ``BeamHypotheses`` does (same tie rules).
  A sample is done when it has ``k`` of them and the worst is ``>=`` the best of all ``2k`` candidate
  scores of the step divided by ``(cur_len + 1) ** length_penalty`` (the batch-of-one value: 4.28's
  counter grows with the batch index). At ``max_length`` every beam of a sample not done is added
  with its running score, normalised by ``max_length``. The best hypothesis wins (the latest added
  among equal scores); EOS is appended when it is shorter than ``max_length``.
* **Text.** ``batch_decode(skip_special_tokens=True)``, then 4.28's ``clean_up_tokenization_spaces``
  (" ." → ".", " 's" → "'s", …) unless the tokenizer's saved config turns it off, then ``strip()``.

Per-sample semantics: all rows start together, so ``cur_len`` is the same for every row; prompts are
left-padded with masked padding and explicit position ids (each token keeps its batch-of-one position);
penalties, hypotheses and stopping are per sample; a finished sample's rows are compacted out of the
KV cache. Speed: one preallocated KV cache (``transformers.StaticCache``) written in place; a beam
reorder moves only the generated columns (the prompt's keys/values are the same for every beam of a
sample; a profile at base size found the whole-cache gather at 19 % of the time); compaction gathers
the rows once when samples finish; one small device→host copy per step (the stopping check, which also
feeds the hypothesis bookkeeping).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from llmva_gebc.config import ConfigError, GenerationConfig
from llmva_gebc.models.shared_prefix import _call_kwargs, build_layout
from llmva_gebc.models.shared_prefix import _left_pad as left_pad

BACKENDS = ("own", "hf")


@dataclass
class DecodeSettings(GenerationConfig):
    """What one ``generate`` call searches with: the ``model.generation`` keys (their schema, defaults and
    meaning: :class:`llmva_gebc.config.GenerationConfig`) plus call overrides.

    ``max_length`` is in the original's terms: it counts the dummy start column, so a caption has at
    most ``max_length - 1`` tokens, EOS included (the original's ``max_length=30`` → 29). ``min_length``
    counts the same way (EOS is forbidden for the first ``min_length - 1`` new tokens). ``backend``:
    ``"own"`` (this module, faithful to transformers 4.28) or ``"hf"`` (the installed transformers'
    ``generate``, NOT faithful: kept as a named alternative for comparison).
    """

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - 1

    @classmethod
    def build(cls, base: Mapping[str, Any], **overrides) -> "DecodeSettings":
        """Settings from a config mapping plus call overrides (None values ignored). ``max_new_tokens=n``
        is accepted as a synonym of ``max_length=n + 1``. Raises TypeError on an unknown key and
        ValueError on an impossible value."""
        known = {f.name for f in fields(cls)}
        merged: Dict[str, Any] = {}
        for src in (base, overrides):
            for key, val in dict(src).items():
                if val is None:
                    continue
                if key == "max_new_tokens":
                    key, val = "max_length", int(val) + 1
                if key not in known:
                    raise TypeError(f"unknown generation setting {key!r}; known: {sorted(known | {'max_new_tokens'})}")
                merged[key] = val
        s = cls(**merged)
        s = replace(s, num_beams=int(s.num_beams), max_length=int(s.max_length), min_length=int(s.min_length),
                    repetition_penalty=float(s.repetition_penalty), length_penalty=float(s.length_penalty))
        if s.num_beams < 1:
            raise ConfigError(f"generation num_beams must be >= 1, got {s.num_beams}")
        if s.max_length < 2:
            raise ConfigError(f"generation max_length must be >= 2 (it counts the dummy start column), got {s.max_length}")
        if s.repetition_penalty <= 0:
            raise ConfigError(f"generation repetition_penalty must be > 0, got {s.repetition_penalty}")
        if s.compile:
            raise ConfigError("model.generation.compile: true is not supported by this version (no compiled decode "
                             "step yet); set it to false")
        if s.backend not in BACKENDS:
            raise ConfigError(f"generation backend must be one of {BACKENDS}, got {s.backend!r}")
        return s


# ------------------------------------------------------------------------------------ KV cache
class KVRows:
    """A preallocated KV cache (``StaticCache``, all rows at the same cache position) with its 2-D
    attention mask (R, capacity) and each row's next position id (R,). Rows can be gathered (beam
    reorder, group → sample fork, compaction) in one ``index_select`` per layer."""

    def __init__(self, llm, rows: int, capacity: int, device: torch.device) -> None:
        from transformers import StaticCache

        self.llm = llm
        self.cache = StaticCache(config=llm.config, max_cache_len=capacity)
        self.mask = torch.zeros(rows, capacity, dtype=torch.long, device=device)  # (R, C)
        self.next_pos = torch.zeros(rows, dtype=torch.long, device=device)  # (R,)
        self.length = 0  # filled cache columns (the same for every row)
        self._keep = _supports(llm, "logits_to_keep")

    def run(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append T columns for every row: embeds (R, T, D), mask (R, T) long, positions (R, T).
        Returns the logits of the last column (R, V)."""
        T = embeds.shape[1]
        self.mask[:, self.length:self.length + T] = mask
        kw = {"logits_to_keep": 1} if self._keep else {}
        out = self.llm(inputs_embeds=embeds, attention_mask=self.mask[:, :self.length + T], position_ids=positions,
                       cache=self.cache, use_cache=True, **kw)
        self.length += T
        self.next_pos = positions[:, -1] + 1
        return out.logits[:, -1]  # (R, V)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (R,); returns the next logits (R, V)."""
        self.mask[:, self.length] = 1
        pos = self.next_pos[:, None]  # (R, 1)
        out = self.llm(input_ids=tokens[:, None], attention_mask=self.mask[:, :self.length + 1], position_ids=pos,
                       cache=self.cache, use_cache=True)
        self.length += 1
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1]  # (R, V)

    def reorder_beams(self, rows: torch.Tensor, start: int) -> None:
        """Beam reorder that keeps the number of rows: row i takes row ``rows[i]``'s columns from
        ``start`` on (the generated tokens). Valid when ``rows[i]`` belongs to the same sample as row i,
        whose earlier columns (the prompt) and mask are identical across its beams: only the generated
        columns move, not the whole preallocated cache."""
        a, b = start, self.length
        if b <= a:
            return
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys[:, :, a:b] = layer.keys[rows, :, a:b]  # (R, H, b-a, hd)
                layer.values[:, :, a:b] = layer.values[rows, :, a:b]

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (R',) long, in that order (repeats allowed)."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys = layer.keys.index_select(0, rows)
                layer.values = layer.values.index_select(0, rows)
                layer.batch_size = int(rows.shape[0])
        self.mask = self.mask.index_select(0, rows)
        self.next_pos = self.next_pos.index_select(0, rows)


def _supports(llm, name: str) -> bool:
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _padded(seqs: Sequence[torch.Tensor], offsets: Optional[Sequence[int]] = None):
    """N × (L_i, D) → embeds (N, P, D) left-padded, mask (N, P) long, positions (N, P): ``offset_i + j``
    for the j-th real token of row i (pads are masked)."""
    emb, mask, pos = left_pad(seqs, seqs[0].device)
    if offsets is not None:
        pos = pos + torch.tensor(list(offsets), dtype=torch.long, device=pos.device)[:, None]
    return emb, mask, pos


# ------------------------------------------------------------------------------------ search
def _process(scores: torch.Tensor, ids: torch.Tensor, cur_len: int, s: DecodeSettings, eos_id: int) -> torch.Tensor:
    """4.28's repetition-penalty and min-length processors on scores (R, V) given the ids (R, cur_len)."""
    if s.repetition_penalty != 1.0:
        seen = scores.gather(1, ids)  # (R, cur_len)
        seen = torch.where(seen < 0, seen * s.repetition_penalty, seen / s.repetition_penalty)
        scores = scores.scatter(1, ids, seen)
    if cur_len < s.min_length:
        scores = scores.clone()
        scores[:, eos_id] = -float("inf")
    return scores


class Hypotheses:
    """The finished hypotheses of one sample, exactly as 4.28's ``BeamHypotheses`` keeps them
    (``early_stopping=False``)."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.k, self.lp = num_beams, length_penalty
        self.beams: List[Tuple[float, List[int]]] = []
        self.worst = 1e9

    def add(self, ids: List[int], sum_logprobs: float) -> None:
        score = sum_logprobs / (len(ids) ** self.lp)
        if len(self.beams) < self.k or score > self.worst:
            self.beams.append((score, ids))
            if len(self.beams) > self.k:
                ranked = sorted((sc, i) for i, (sc, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self.beams) < self.k:
            return False
        return self.worst >= best_sum_logprobs / cur_len ** self.lp

    def best(self) -> List[int]:
        return sorted(self.beams, key=lambda b: b[0])[-1][1]


def greedy(kv: KVRows, logits: torch.Tensor, s: DecodeSettings, eos_id: int, start_id: int) -> List[List[int]]:
    """4.28 ``greedy_search`` per row from the prompt's last logits (R, V): new ids, EOS included."""
    R = logits.shape[0]
    ids = torch.full((R, 1), start_id, dtype=torch.long, device=logits.device)  # (R, cur_len)
    out: List[List[int]] = [[] for _ in range(R)]
    alive = list(range(R))  # sample of each row
    cur = 1
    while True:
        nxt = _process(logits, ids, cur, s, eos_id).argmax(-1)  # (R,)
        cur += 1
        keep = []
        for j, t in enumerate(nxt.tolist()):  # the one host sync of the step
            out[alive[j]].append(t)
            if t != eos_id:
                keep.append(j)
        if cur >= s.max_length or not keep:
            return out
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if len(keep) < len(alive):  # compact finished rows out
            sel = torch.tensor(keep, device=logits.device)
            kv.select(sel)
            ids, nxt = ids[sel], nxt[sel]
            alive = [alive[j] for j in keep]
        logits = kv.step(nxt)


def beam_search(kv: KVRows, logits: torch.Tensor, s: DecodeSettings, eos_id: int, start_id: int) -> List[List[int]]:
    """4.28 ``beam_search`` per sample from the prompt's last logits (N, V) (one row per sample; the
    cache is expanded to N·k rows here): the best hypothesis' new ids, EOS appended when it ended."""
    k, N, dev = s.num_beams, logits.shape[0], logits.device
    kv.select(torch.arange(N, device=dev).repeat_interleave(k))
    prompt_cols = kv.length  # columns identical across the beams of a sample
    logits = logits.repeat_interleave(k, dim=0)  # (N*k, V)
    beam_scores = torch.zeros(N, k, dtype=torch.float32, device=dev)
    beam_scores[:, 1:] = -1e9
    ids = torch.full((N * k, 1), start_id, dtype=torch.long, device=dev)  # (n*k, cur_len)
    hyps = [Hypotheses(k, s.length_penalty) for _ in range(N)]
    host = [[[start_id] for _ in range(k)] for _ in range(N)]  # ids of each running beam, per alive sample
    alive = list(range(N))
    rank = torch.arange(2 * k, device=dev)
    cur = 1
    while True:
        n, V = len(alive), logits.shape[-1]
        scores = _process(F.log_softmax(logits, dim=-1), ids, cur, s, eos_id)  # (n*k, V), logits' dtype
        cand = (scores + beam_scores.view(-1, 1)).view(n, k * V)  # float32
        top, idx = cand.topk(2 * k, dim=1, largest=True, sorted=True)  # (n, 2k)
        tok, src = idx % V, idx // V
        order = ((tok == eos_id).long() * 2 * k + rank).argsort(dim=1)[:, :k]  # first k non-EOS, by rank
        top_h, tok_h, src_h = torch.stack([top.double(), tok.double(), src.double()]).cpu().tolist()  # one sync
        new_host, done = [], []
        for j, smp in enumerate(alive):
            running = []
            for r in range(2 * k):
                t, b = int(tok_h[j][r]), int(src_h[j][r])
                if t == eos_id:
                    if r < k:
                        hyps[smp].add(host[j][b], top_h[j][r])
                elif len(running) < k:
                    running.append(host[j][b] + [t])
            new_host.append(running)
            done.append(hyps[smp].is_done(top_h[j][0], cur + 1))
        host = new_host
        cur += 1
        beam_scores = top.gather(1, order)  # (n, k)
        if cur >= s.max_length or all(done):
            final = beam_scores.tolist()
            for j, smp in enumerate(alive):
                if not done[j]:
                    for b in range(k):
                        hyps[smp].add(host[j][b], final[j][b])
            return [_with_eos(h.best(), s.max_length, eos_id) for h in hyps]
        keep = [j for j in range(n) if not done[j]]
        rows = (torch.arange(n, device=dev)[:, None] * k + src.gather(1, order))  # (n, k) source rows
        nxt = tok.gather(1, order)  # (n, k)
        if len(keep) < n:  # compact finished samples out
            sel = torch.tensor(keep, device=dev)
            rows, nxt, beam_scores = rows[sel], nxt[sel], beam_scores[sel]
            alive = [alive[j] for j in keep]
            host = [host[j] for j in keep]
        rows, nxt = rows.reshape(-1), nxt.reshape(-1)
        if len(keep) < n:
            kv.select(rows)
        else:  # same samples: only the generated columns move between beams
            kv.reorder_beams(rows, prompt_cols)
        ids = torch.cat([ids.index_select(0, rows), nxt[:, None]], dim=1)
        logits = kv.step(nxt)


def _with_eos(hyp: List[int], max_length: int, eos_id: int) -> List[int]:
    """4.28's finalize: drop the dummy start column, append EOS when shorter than ``max_length``."""
    return hyp[1:] + ([eos_id] if len(hyp) < max_length else [])


def search(kv: KVRows, logits: torch.Tensor, s: DecodeSettings, eos_id: int, start_id: int) -> List[List[int]]:
    if s.num_beams == 1:
        return greedy(kv, logits, s, eos_id, start_id)
    return beam_search(kv, logits, s, eos_id, start_id)


# ------------------------------------------------------------------------------------ entry points
@torch.no_grad()
def generate_ids(llm, prompts: Sequence[torch.Tensor], s: DecodeSettings, eos_id: int, start_id: int) -> List[List[int]]:
    """New token ids per prompt (EOS included when a caption ended), each exactly its batch-of-one
    result. ``prompts``: N × (L_i, D) input embeddings; ``start_id``: the dummy start column (BOS)."""
    dev = prompts[0].device
    emb, mask, pos = _padded(prompts)  # (N, P, D)
    kv = KVRows(llm, len(prompts), emb.shape[1] + s.max_new_tokens, dev)
    return search(kv, kv.run(emb, mask, pos), s, eos_id, start_id)


@torch.no_grad()
def generate_ids_shared(llm, prefixes: Sequence[torch.Tensor], group_of: Sequence[int], tails: Sequence[torch.Tensor],
                        s: DecodeSettings, eos_id: int, start_id: int) -> List[List[int]]:
    """As :func:`generate_ids` for prompts ``prefixes[group_of[i]] + tails[i]``: each prefix (Lp_g, D)
    is run once, its cache forked for its tails (L_i >= 1, D) and then for the beams. The same ids
    as the unshared path (up to float rounding of the same sums)."""
    dev = prefixes[0].device
    pe, pm, pp = _padded(prefixes)  # (G, P, D)
    lens = [int(p.shape[0]) for p in prefixes]
    B, T = len(tails), max(int(t.shape[0]) for t in tails)
    kv = KVRows(llm, len(prefixes), pe.shape[1] + T + s.max_new_tokens, dev)
    kv.run(pe, pm, pp)
    kv.select(torch.as_tensor(list(group_of), dtype=torch.long, device=dev))  # (B,) fork per sample
    te, tm, tp = _padded(tails, [lens[g] for g in group_of])  # (B, T, D)
    return search(kv, kv.run(te, tm, tp), s, eos_id, start_id)


# ------------------------------------------------------------------------------------ hf backend
def with_batch_invariant_penalty(g: Dict[str, Any]) -> Dict[str, Any]:
    """HF ``generate`` kwargs whose repetition penalty covers every generated token of every row (HF's
    own processor skips, per row, as many generated tokens as the row has left padding)."""
    rp = g.get("repetition_penalty")
    if rp is None or float(rp) == 1.0:
        return g
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    g = dict(g)
    procs = LogitsProcessorList(g.pop("logits_processor", None) or [])
    procs.append(RepetitionPenaltyLogitsProcessor(float(rp), prompt_ignore_length=0))
    g["repetition_penalty"], g["logits_processor"] = 1.0, procs
    return g


@torch.no_grad()
def hf_generate(model, batch: Dict[str, Any], share: bool, s: DecodeSettings) -> List[str]:
    """``generation.backend: hf``: the installed transformers' ``generate`` (the path before this module).
    NOT the original's search (see the module docstring: stopping, lengths, min_length and text differ
    from 4.28); kept for comparison (benchmarks). Lengths in the own path's terms: at most ``max_length - 1``
    new tokens, EOS forbidden for the first ``min_length - 1``."""
    g = {"num_beams": s.num_beams, "max_new_tokens": s.max_new_tokens, "min_new_tokens": s.min_length - 1,
         "repetition_penalty": s.repetition_penalty, "length_penalty": s.length_penalty}
    dev, llm = model.device, model.llm
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.eos_id
    kw: Dict[str, Any] = {}
    if share:  # prefill each prefix once; generate continues from the forked cache with the tails
        lay = build_layout(model, batch)
        pe, pmask, ppos = left_pad(lay.prefix_embeds, dev)  # (G, P, D)
        out = llm(inputs_embeds=pe, attention_mask=pmask, position_ids=ppos, use_cache=True, **_call_kwargs(llm))
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        cache.batch_select_indices(lay.group_of.repeat_interleave(s.num_beams))  # (B*k, heads, P, hd)
        B, P, T = len(lay.tails), pe.shape[1], max(len(t) for t in lay.tails)
        ids = torch.full((B, T), model.eos_id, dtype=torch.long, device=dev)  # tails left-padded in their block
        tmask = torch.zeros(B, T, dtype=torch.long, device=dev)
        for i, t in enumerate(lay.tails):
            ids[i, T - len(t):] = torch.tensor(t, device=dev)
            tmask[i, T - len(t):] = 1
        tail_emb = llm.get_input_embeddings()(ids)  # (B, T, D)
        embeds = torch.cat([tail_emb.new_zeros(B, P, tail_emb.shape[-1]), tail_emb], dim=1)  # (B, P+T, D)
        mask = torch.cat([pmask[lay.group_of], tmask], dim=1)  # (B, P+T)
        kw["cache"] = cache
    else:
        vis = model.visual_tokens(batch)  # (B, Nv, D)
        prefixes = [model._prefix(vis[i], p) for i, p in enumerate(batch["prompt"])]
        embeds, mask, _ = _padded(prefixes)  # (B, L, D), (B, L)
    res = llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, num_return_sequences=1,
                       eos_token_id=model.eos_id, pad_token_id=pad, bos_token_id=model.bos_id,
                       **with_batch_invariant_penalty(g), **kw)  # (B, new): only the new tokens
    return [t.strip() for t in model.tokenizer.batch_decode(res, skip_special_tokens=True)]


# ------------------------------------------------------------------------------------ text
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def cleans_up_spaces(tokenizer) -> bool:
    """Whether transformers 4.28 would apply ``clean_up_tokenization_spaces`` with this tokenizer: yes
    unless its saved config says false (4.28's default was true; 5.x changed the default)."""
    return bool(getattr(tokenizer, "init_kwargs", {}).get("clean_up_tokenization_spaces", True))


def decode_text(tokenizer, ids: Sequence[Sequence[int]]) -> List[str]:
    """Captions as the original post-processed them: ``batch_decode(skip_special_tokens=True)`` with
    4.28's space clean-up (see :func:`cleans_up_spaces`), then ``strip()``."""
    texts = tokenizer.batch_decode([list(x) for x in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if cleans_up_spaces(tokenizer):
        texts = [clean_up_spaces(t) for t in texts]
    return [t.strip() for t in texts]


def clean_up_spaces(text: str) -> str:
    """4.28's ``clean_up_tokenization``: the replacements below, in this order."""
    for a, b in _CLEANUP:
        text = text.replace(a, b)
    return text


__all__ = ["BACKENDS", "hf_generate", "with_batch_invariant_penalty", "DecodeSettings", "KVRows", "Hypotheses", "greedy", "beam_search", "search", "generate_ids",
           "generate_ids_shared", "decode_text", "cleans_up_spaces", "clean_up_spaces"]
