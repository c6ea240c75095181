"""The typed, validated configuration of `ctclip train`: one dataclass per section.

Built with `ctcommon.settings.from_mapping` before any work (before the process group, before
reading data), so a misspelt key such as `train.ckpt_evry` fails in one line naming the key, its
section and the closest valid name, instead of training for hours with a default nobody asked for.
`resolved_config.yaml` is written from this object, so it holds only keys the trainer reads.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctcommon.settings import UnknownSettingError, check_keys, from_mapping, to_mapping

_logger = logging.getLogger(__name__)

PRECISIONS = ('fp32', 'bf16', 'bf16-autocast')


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise TypeError(f'{name} must be a number, not {value!r}')
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f'{name} must be a number, not {value!r}') from None


def _int(value: Any, name: str, minimum: int | None = None, optional: bool = False) -> int | None:
    """An int (integral floats and numeric strings too, as `int(...)` accepted before)."""
    if value is None and optional:
        return None
    kind = (
        'an int'
        if minimum is None
        else ('a positive int' if minimum == 1 else f'an int >= {minimum}')
    )
    kind += ' or null' if optional else ''
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            out = value
        else:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            out = int(number)
    except (TypeError, ValueError):
        raise TypeError(f'{name} must be {kind}, not {value!r}') from None
    if minimum is not None and out < minimum:
        raise ValueError(f'{name} must be {kind}, not {out}')
    return out


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be true or false, not {value!r}')
    return value


def _optional_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list, tuple, bool)):
        raise TypeError(f'{name} must be a path or null, not {value!r}')
    return str(value)


@dataclass
class ModelCfg:
    """The factory model (`ctclip.factory.list_models()`) and how it runs."""

    name: str | None = None
    overrides: dict = field(default_factory=dict)
    grad_checkpointing: bool = False
    # channels_last: the image enters in NDHWC layout and the 3D convolutions follow it (cuDNN's
    # tensor-core kernels may prefer it on GPUs; measured in benchmarks/perf/bench_gpu.py)
    channels_last: bool = False

    def __post_init__(self) -> None:
        self.name = _optional_str(self.name, 'model.name')
        if self.overrides is None:
            self.overrides = {}
        if not isinstance(self.overrides, Mapping):
            raise TypeError(f'model.overrides must be a mapping, not {self.overrides!r}')
        self.overrides = dict(self.overrides)
        self.grad_checkpointing = _bool(self.grad_checkpointing, 'model.grad_checkpointing')
        self.channels_last = _bool(self.channels_last, 'model.channels_last')


@dataclass
class DataCfg:
    """The cache, labels and texts, and how they are split, paired, cropped and loaded.

    The defaults are `ctclip.data.builder.DATA_DEFAULTS` plus the loader's own settings;
    `data.batch_size` is the micro-batch per process.
    """

    cache: str | None = None
    labels: str | None = None
    reports: str | None = None
    evidence: str | None = None
    evidence_statuses: list = field(default_factory=lambda: ['present', 'uncertain'])
    train_split: Any = field(default_factory=lambda: ['train'])
    val_split: Any = field(default_factory=lambda: ['valid'])
    val_fraction: float = 0.0
    paired_fraction: float = 1.0
    unpaired_text: str = 'other'
    crop_zyx: Any = None
    window: Any = None
    max_length: int = 128
    max_evidence: int = 8
    evidence_length: int = 32
    augment: dict | None = None
    max_val_volumes: int | None = None
    batch_size: int = 2
    num_workers: int = 0
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        for key in ('cache', 'labels', 'reports', 'evidence'):
            setattr(self, key, _optional_str(getattr(self, key), f'data.{key}'))
        self.val_fraction = _number(self.val_fraction, 'data.val_fraction')
        self.paired_fraction = _number(self.paired_fraction, 'data.paired_fraction')
        for key in ('val_fraction', 'paired_fraction'):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f'data.{key} must be in [0, 1], not {getattr(self, key)}')
        self.max_length = _int(self.max_length, 'data.max_length', 1)
        self.max_evidence = _int(self.max_evidence, 'data.max_evidence', 0)
        self.evidence_length = _int(self.evidence_length, 'data.evidence_length', 1)
        self.max_val_volumes = _int(self.max_val_volumes, 'data.max_val_volumes', 0, optional=True)
        self.batch_size = _int(self.batch_size, 'data.batch_size', 1)
        self.num_workers = _int(self.num_workers or 0, 'data.num_workers', 0)
        self.prefetch_factor = _int(self.prefetch_factor, 'data.prefetch_factor', 1)
        if self.augment is not None and not isinstance(self.augment, Mapping):
            raise TypeError(f'data.augment must be a mapping or null, not {self.augment!r}')


@dataclass
class OptimCfg:
    """AdamW (DeepSpeed's optimizer section is filled from these)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        self.lr = _number(self.lr, 'optim.lr')
        if self.lr <= 0:
            raise ValueError(f'optim.lr must be > 0, not {self.lr}')
        self.weight_decay = _number(self.weight_decay, 'optim.weight_decay')
        if self.weight_decay < 0:
            raise ValueError(f'optim.weight_decay must be >= 0, not {self.weight_decay}')
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise TypeError(f'optim.betas must be a list of two numbers, not {self.betas!r}')
        self.betas = [_number(b, 'optim.betas') for b in self.betas]
        self.eps = _number(self.eps, 'optim.eps')
        if self.grad_clip is not None:
            self.grad_clip = _number(self.grad_clip, 'optim.grad_clip')


@dataclass
class ScheduleCfg:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the base rate."""

    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        self.warmup_steps = _int(self.warmup_steps, 'schedule.warmup_steps', 0)
        self.min_lr_ratio = _number(self.min_lr_ratio, 'schedule.min_lr_ratio')
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f'schedule.min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}')


@dataclass
class DeepSpeedCfg:
    """A DeepSpeed JSON (a name such as `zero2`, a path or a mapping), its ZeRO stage, precision."""

    config: Any = None  # None: deepspeed_config.DEFAULT_DEEPSPEED (ZeRO-0), no file needed
    zero_stage: int | None = None
    precision: str = 'fp32'

    def __post_init__(self) -> None:
        if self.config is not None and not isinstance(self.config, (str, Mapping)):
            raise TypeError(
                f'deepspeed.config must be a name, a JSON path or a mapping, not {self.config!r}'
            )
        self.zero_stage = _int(self.zero_stage, 'deepspeed.zero_stage', 0, optional=True)
        if self.zero_stage is not None and self.zero_stage > 3:
            raise ValueError(f'deepspeed.zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}')
        if self.precision not in PRECISIONS:
            raise ValueError(
                f'deepspeed.precision must be one of {PRECISIONS}, not {self.precision!r}'
            )


@dataclass
class TrainCfg:
    """Length, logging, checkpointing, evaluation and where the run starts and writes."""

    steps: int | None = None
    epochs: float | None = None
    grad_accum: int = 1
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_batch_size: int = 4
    zero_shot_templates: Any = 'ctclip'
    output_dir: str | None = None
    init_from: str | None = None
    pseudo_labels: bool = False
    seed: int = 0
    resume: bool = True
    stop_after: int | None = None
    progress: bool = True
    # cuDNN times its convolution algorithms on the first step and keeps the fastest; crops
    # have one fixed shape, so this pays off from the second step (GPU only)
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        self.steps = _int(self.steps, 'train.steps', 0, optional=True)
        if self.epochs is not None:
            self.epochs = _number(self.epochs, 'train.epochs')
            if self.epochs < 0:
                raise ValueError(f'train.epochs must be >= 0, not {self.epochs}')
        self.grad_accum = _int(self.grad_accum, 'train.grad_accum', 1)
        self.log_every = _int(self.log_every, 'train.log_every', 1)
        self.ckpt_every = _int(self.ckpt_every, 'train.ckpt_every', 1)
        self.keep_checkpoints = _int(self.keep_checkpoints, 'train.keep_checkpoints', 1)
        self.eval_every = _int(self.eval_every or 0, 'train.eval_every', 0)
        self.eval_batch_size = _int(self.eval_batch_size, 'train.eval_batch_size', 1)
        self.output_dir = _optional_str(self.output_dir, 'train.output_dir')
        self.init_from = _optional_str(self.init_from, 'train.init_from')
        self.seed = _int(self.seed, 'train.seed')
        self.stop_after = _int(self.stop_after, 'train.stop_after', 1, optional=True)
        for key in ('pseudo_labels', 'resume', 'progress', 'cudnn_benchmark'):
            setattr(self, key, _bool(getattr(self, key), f'train.{key}'))


def _default_loss() -> dict:
    return {'bce': {'weight': 1.0}}


@dataclass
class TrainConfig:
    """Every setting of one training stage. `loss` stays a mapping of terms: `ctclip.losses`
    validates each term and its keys (checked here, before any work)."""

    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: dict = field(default_factory=_default_loss)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    deepspeed: DeepSpeedCfg = field(default_factory=DeepSpeedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)

    def __post_init__(self) -> None:
        if not isinstance(self.loss, Mapping):
            raise TypeError(f"'loss' must be a mapping of loss terms, not {self.loss!r}")
        from ctclip.losses import active_terms

        self.loss = copy.deepcopy(dict(self.loss))
        active_terms(self.loss)  # unknown terms and term keys fail here, before any work


TRAIN_DEFAULTS: dict[str, Any] = to_mapping(TrainConfig())


def train_config(cfg: Mapping | TrainConfig) -> TrainConfig:
    """The typed config of a run from a (partial) mapping: the defaults deep-merged underneath,
    as before, so a config that names one loss term keeps the default `bce` beside it."""
    if isinstance(cfg, TrainConfig):
        return copy.deepcopy(cfg)
    from ctclip.config import merge

    if not isinstance(cfg, Mapping):
        raise TypeError(f'The training config must be a mapping, not {type(cfg).__name__}')
    merged = merge(copy.deepcopy(TRAIN_DEFAULTS), dict(cfg))
    _check_every_key(merged)
    return from_mapping(TrainConfig, merged)


def _check_every_key(cfg: Mapping) -> None:
    """All misspelt keys in one line (`from_mapping` stops at the first), so a user fixing
    `train.ckpt_evry=10 data.batchsize=4` learns of both at once."""
    problems = []
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key in cfg:
        try:
            check_keys({key: None}, sections)
        except UnknownSettingError as error:
            problems.append(str(error))
    for name, section in sections.items():
        value = cfg.get(name)
        if not isinstance(value, Mapping) or not dataclasses.is_dataclass(section.default_factory):
            continue
        valid = [f.name for f in dataclasses.fields(section.default_factory)]
        for key in value:
            try:
                check_keys({key: None}, valid, name)
            except UnknownSettingError as error:
                problems.append(str(error))
    if len(problems) == 1:
        raise UnknownSettingError(problems[0])
    if problems:  # one line each without the lists of valid keys, which would repeat
        raise UnknownSettingError('; '.join(p.split(' Valid keys:')[0] for p in problems))
