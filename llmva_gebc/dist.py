"""The only module that touches ``torch.distributed``.

Every function has a single-process fallback, so library code can call ``get_rank()``,
``barrier()``, ``all_gather_object()`` ... without caring whether it runs under ``torchrun``.

* :func:`init_distributed` reads ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` (set by ``torchrun``) and
  starts a process group: NCCL when CUDA is available, gloo otherwise. One process: no-op.
* :func:`wrap_model` applies PyTorch's own engines: DDP (``strategy="ddp"``) or FSDP2
  (``strategy="fsdp"``, ``torch.distributed.fsdp.fully_shard``) unit by unit: each LLM decoder layer,
  then the adapter (and encoder), then the root with the LLM's embeddings and head.
* :class:`EpochBatchSampler` is the deterministic, resumable training sampler.
* Timeouts: every collective must complete within ``timeout_s`` (``run.distributed.timeout_s``;
  default 600 s for gloo, 1800 s for NCCL). A stalled or dead rank then ends the job with
  :class:`CollectiveError` naming the collective (``all_gather_object``, ``barrier``, ``DDP gradient
  all-reduce``, ...), instead of hanging. Under NCCL the watchdog enforces it
  (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default) and aborts the process.
* Helpers that hide DTensor/DDP details from the trainer: :func:`unwrap`, :func:`no_grad_sync`,
  :func:`full_trainable_state_dict`, :func:`load_full_trainable_state_dict`,
  :func:`optimizer_state_dict`, :func:`load_optimizer_state_dict`.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as _td
from torch import nn

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
DEFAULT_TIMEOUT_S = {"gloo": 600, "nccl": 1800}
_timeout_s: Optional[float] = None


class CollectiveError(RuntimeError):
    """A collective that did not complete: a rank stalled (timeout) or died (connection closed)."""


def default_timeout_s(backend: Optional[str]) -> int:
    """``run.distributed.timeout_s: null``: 600 s for gloo (CPU), 1800 s for NCCL."""
    return DEFAULT_TIMEOUT_S.get(backend or ("nccl" if torch.cuda.is_available() else "gloo"), 1800)


@contextlib.contextmanager
def collective(name: str) -> Iterator[None]:
    """Run a collective; turn a backend failure (timeout, peer gone) into :class:`CollectiveError`
    naming ``name``, the rank and the timeout."""
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as e:
        if not is_initialized():
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CollectiveError(
            f"collective {name} failed on rank {get_rank()} of {get_world_size()} (run.distributed.timeout_s="
            f"{_timeout_s:g} s): another rank stalled or died before reaching it ({first})") from e


# ------------------------------------------------------------------------------------ process group
def is_initialized() -> bool:
    return _td.is_available() and _td.is_initialized()


def get_rank() -> int:
    return _td.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return _td.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(backend: Optional[str] = None, timeout_s: Optional[float] = None) -> Tuple[int, int, int]:
    """Start the process group from torchrun's environment; returns ``(rank, local_rank, world_size)``.

    ``WORLD_SIZE`` unset or 1 → single process, nothing is initialised. ``backend`` None → ``nccl`` when
    CUDA is available, else ``gloo``. On CUDA the current device is set to ``cuda:LOCAL_RANK``.
    ``timeout_s``: how long any collective may wait for the other ranks (None: 600 s gloo, 1800 s
    NCCL); work done by rank 0 alone while the others wait (scoring, checkpoint writing) must fit in it.
    Calling it again once initialised just returns the current values.
    """
    global _timeout_s
    if is_initialized():
        return get_rank(), get_local_rank(), get_world_size()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 0, 1
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {var} is not set; launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if timeout_s is None:
        timeout_s = default_timeout_s(backend)
    if not timeout_s > 0:
        raise ValueError(f"run.distributed.timeout_s must be > 0 seconds, got {timeout_s}")
    _timeout_s = float(timeout_s)
    _td.init_process_group(backend=backend, rank=rank, world_size=world_size,
                           timeout=datetime.timedelta(seconds=float(timeout_s)))
    return rank, local_rank, world_size


def destroy() -> None:
    if is_initialized():
        _td.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        with collective("barrier"):
            _td.barrier()


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_initialized():
        return [obj]
    out: list = [None] * get_world_size()
    with collective("all_gather_object"):
        _td.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    with collective("broadcast_object_list"):
        _td.broadcast_object_list(box, src=src)
    return box[0]


def _comm_device() -> torch.device:
    if is_initialized() and _td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a new tensor; the input is untouched)."""
    if not is_initialized():
        return tensor.detach().clone()
    t = tensor.detach().to(_comm_device(), copy=True)
    with collective("all_reduce"):
        _td.all_reduce(t, op=_td.ReduceOp.SUM)
    return (t / get_world_size()).to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if not is_initialized():
        return tensor.detach().clone()
    t = tensor.detach().to(_comm_device(), copy=True)
    with collective("all_reduce"):
        _td.all_reduce(t, op=_td.ReduceOp.SUM)
    return t.to(tensor.device)


def any_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not is_initialized():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


# ------------------------------------------------------------------------------------ wrapping
def _decoder_layers(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def wrap_model(model: nn.Module, strategy: str = "ddp", device: Optional[torch.device] = None,
               find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``model`` for data-parallel training; returns it unchanged in a single process.

    ``ddp``: ``DistributedDataParallel`` (only parameters with ``requires_grad`` are synchronised;
    ``find_unused_parameters`` stays False unless asked, since every trainable parameter is used).
    ``fsdp``: FSDP2 ``fully_shard`` bottom-up: every module whose class name ends in ``DecoderLayer``
    (the frozen LLM's blocks, LoRA weights included), then each top-level child of ``model`` that
    owns parameters and is not the LLM (adapter, encoder), then the root, which keeps the LLM's
    embeddings, final norm and (tied) head: the model calls the input embeddings directly.
    FSDP2 only requires uniform dtype among the *trainable* parameters of a unit, so frozen fp16 LLM
    weights and fp32 adapter weights live in different units. ``generate`` is registered as an FSDP
    forward method so it all-gathers parameters like ``forward``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"run.distributed.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not is_initialized():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        kwargs: Dict[str, Any] = {}
        if device is not None and device.type == "cuda":
            kwargs = {"device_ids": [device.index], "output_device": device.index}
        return DDP(model, find_unused_parameters=find_unused_parameters, **kwargs)

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    dev_type = device.type if device is not None else _comm_device().type
    mesh = init_device_mesh(dev_type, (get_world_size(),))
    sharded: set = set()

    def owned(m: nn.Module) -> List[nn.Parameter]:
        return [p for p in m.parameters() if id(p) not in sharded]

    def shard(m: nn.Module) -> None:
        params = owned(m)
        m.register_forward_hook(_outputs_own_storage)  # before fully_shard's: runs first
        fully_shard(m, mesh=mesh)
        sharded.update(id(p) for p in params)

    layers = _decoder_layers(model)
    for layer in layers:
        shard(layer)
    layer_ids = {id(m) for m in layers}
    for _, child in model.named_children():
        holds_llm = any(id(m) in layer_ids for m in child.modules())
        # The LLM's leftovers (token embeddings, final norm, tied LM head) stay with the root unit: the
        # model calls the input embeddings directly, outside the LLM's forward, and tied weights must
        # share one unit.
        if owned(child) and not holds_llm:
            shard(child)
    fully_shard(model, mesh=mesh)
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")
    return model


def _own_storage(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.clone() if x._base is not None and x.requires_grad else x
    if isinstance(x, (tuple, list)):
        return type(x)(_own_storage(v) for v in x)
    return x


def _outputs_own_storage(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook on each FSDP2 unit: outputs that are views get their own storage.

    FSDP2 hangs its pre-backward hook (which all-gathers the unit's weights for backward) on the
    unit's outputs; on a view, an in-place op by the caller would drop that hook and backward would
    use sharded weights. The adapter's last ``nn.Linear`` on a 3-D input and OPT's decoder layer
    (``.view`` of the residual sum) return views, hence PyTorch's "returned a view tensor" warning.
    Nothing in this package changes them in place (``tests/test_train_cli.py`` checks that FSDP and
    DDP train to the same weights), but a copy removes the hazard for callers that might, and the
    warning with it. The copy is one (B, L, D) tensor per unit in training only; no-op without grad.
    """
    if not torch.is_grad_enabled():
        return output
    return _own_storage(output)


def unwrap(model: nn.Module) -> nn.Module:
    """The user model inside a DDP wrapper (FSDP2 modifies the model in place)."""
    return model.module if hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module) \
        and type(model).__name__ == "DistributedDataParallel" else model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter (for gradient-accumulation micro-steps)."""
    if not enabled or not is_initialized():
        yield
        return
    if is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def reshard(model: nn.Module) -> None:
    """Register the sharded parameters again everywhere (FSDP2 keeps the root unsharded after a
    forward); state-dict code must see the same parameter objects as the optimizer."""
    if not is_fsdp(model):
        return
    for m in model.modules():
        if is_fsdp(m):
            m.reshard()


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        return t.full_tensor()
    return t


def full_trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The unsharded trainable weights on CPU (a collective under FSDP: every rank must call it)."""
    reshard(model)
    inner = unwrap(model)
    return {k: _full(v.detach()).cpu().clone() for k, v in inner.trainable_state_dict().items()}


@torch.no_grad()
def load_full_trainable_state_dict(model: nn.Module, sd: Dict[str, torch.Tensor]) -> None:
    """Load unsharded trainable weights into a (possibly FSDP-sharded) model; every rank calls it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    reshard(model)
    inner = unwrap(model)
    if not any(isinstance(p, DTensor) for _, p in inner.trainable_parameters()):
        inner.load_trainable_state_dict(sd, strict=True)
        return
    params = dict(inner.trainable_parameters())
    missing = sorted(set(params) - set(sd))
    if missing:
        raise KeyError(f"trainable weights missing from the checkpoint: {missing[:5]}")
    for name, p in params.items():
        full = sd[name].to(dtype=p.dtype)
        if isinstance(p, DTensor):
            local = distribute_tensor(full.to(p.device_mesh.device_type), p.device_mesh, p.placements)
            p.to_local().copy_(local.to_local())
        else:
            p.copy_(full.to(p.device))


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """An optimizer state that does not depend on the sharding (a collective under FSDP).

    DDP / single process: ``optimizer.state_dict()`` (identical on every rank). FSDP: the full,
    unsharded state keyed by parameter name (``torch.distributed.checkpoint.state_dict``).
    """
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        reshard(model)
        return {"fsdp_full": get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=False))}
    return optimizer.state_dict()


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    if "fsdp_full" in state:
        if not is_fsdp(model):
            raise ValueError("this optimizer state was saved by an FSDP run; resume with run.distributed.strategy=fsdp")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        reshard(model)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state["fsdp_full"],
                                 options=StateDictOptions(full_state_dict=True))
        return
    if is_fsdp(model):
        raise ValueError("this optimizer state was saved by a DDP/single-process run; resume with the same strategy")
    optimizer.load_state_dict(state)


# ------------------------------------------------------------------------------------ sampling
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one training sample in one epoch: independent of rank, world size and batch."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63 - 1)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Deterministic, rank-sharded, resumable batch sampler for training.

    Epoch ``e``'s order is ``randperm(n)`` from a generator seeded with ``seed + e`` (``shuffle``) or
    ``0..n-1``; it is padded by wrapping around to a multiple of ``world_size``, rank ``r`` takes
    ``order[r::world_size]`` (as ``DistributedSampler``) and cuts it into ``batch_size`` batches,
    dropping the last partial one so every rank runs the same number of steps.

    Each element is ``(index, sample_seed)`` so a :class:`SeededDataset` can seed per-sample
    randomness. Resume positions count **samples**: after ``k`` batches on every rank the samples
    consumed are exactly the first ``k * batch_size * world_size`` entries of the epoch's order (the
    ranks interleave), whatever the batch size. ``set_epoch(e, start_sample=P)`` restarts epoch ``e``
    after those ``P`` samples: the rest of the order (padded by wrapping around) is sharded and batched
    with the *current* batch size and world size, so a run resumed with another ``batch_size`` or
    number of processes trains every remaining sample once (at most ``batch_size*world_size - 1`` are
    dropped at the epoch's end, as in any epoch). With unchanged settings the batches equal an
    uninterrupted run's. ``start_batch=k`` is ``start_sample = k * batch_size * world_size``. No
    global RNG is touched.
    """

    exact_world_remap = True  # a resume position carries over to another world size

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.rank, self.world_size = num_samples, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start_sample = 0, 0
        per_rank = -(-num_samples // world_size)
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            from llmva_gebc.errors import UserError

            raise UserError(
                f"the training set has {num_samples} samples, fewer than batch_size ({batch_size}) x "
                f"world_size ({world_size}); " + ("lower run.batch_size_train" if num_samples else
                                                  "no boundary has its features or video (see the warning above)"))

    @property
    def samples_per_batch(self) -> int:
        """Samples consumed over all ranks by one batch on every rank."""
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: Optional[int] = None) -> None:
        self.epoch = epoch
        self.start_sample = start_batch * self.samples_per_batch if start_sample is None else int(start_sample)

    def _full_order(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(self.n, generator=g).tolist()
        return list(range(self.n))

    def _order(self) -> List[int]:
        """This rank's share of the epoch's order after ``start_sample`` (padded by wrapping around)."""
        order = self._full_order()
        rest = order[min(self.start_sample, self.n):]
        total = -(-len(rest) // self.world_size) * self.world_size
        rest = (rest + order * (-(-(total - len(rest)) // max(self.n, 1))))[:total]
        return rest[self.rank::self.world_size]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        mine = self._order()
        for b in range(len(mine) // self.batch_size):
            idx = mine[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in idx]

    def __len__(self) -> int:
        """Batches left in this epoch after ``start_sample``."""
        rest = max(self.n - self.start_sample, 0)
        return -(-rest // self.world_size) // self.batch_size


class SeededDataset(torch.utils.data.Dataset):
    """Runs ``dataset[index]`` with python/numpy/torch RNGs seeded by the sampler's per-sample seed.

    Random augmentation (frame jitter ...) then depends only on (seed, epoch, index): not on the
    worker that loads it, the batches skipped on resume, or the model's own RNG use.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        import random

        import numpy as np

        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed (and not restore) the CUDA
            # RNG, and costs ~7 ms a call (its lazy CUDA/XPU seeding records a stack trace)
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


__all__ = [
    "init_distributed", "destroy", "is_initialized", "get_rank", "get_local_rank", "get_world_size",
    "is_main_process", "barrier", "all_gather_object", "broadcast_object", "all_reduce_mean",
    "all_reduce_sum", "any_true", "wrap_model", "unwrap", "is_fsdp", "reshard", "no_grad_sync",
    "full_trainable_state_dict", "load_full_trainable_state_dict", "optimizer_state_dict",
    "load_optimizer_state_dict", "EpochBatchSampler", "SeededDataset", "sample_seed", "STRATEGIES",
]
