"""The training loop: build everything from a resolved config, then step, log, evaluate, checkpoint."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ctclip.config import dump_config
from ctclip.data.builder import build_datasets
from ctclip.data.dataset import collate
from ctclip.data.sampling import StepSampler
from ctclip.data.text import model_tokenizer
from ctclip.distributed import init_distributed
from ctclip.inference import input_window
from ctclip.training import checkpoint as ckpt
from ctclip.training.batch import as_float, model_inputs, prompt_inputs, to_device
from ctclip.training.deepspeed_config import deepspeed_config
from ctclip.training.evaluation import evaluate
from ctclip.training.optimizer import freeze_unused_text, lift_scalar_parameters, param_groups
from ctclip.training.precision import has_batchnorm, uses_autocast, weight_dtype
from ctclip.training.run_log import RunLogger, plot_curves
from ctclip.training.schedule import lr_lambda, reseed
from ctclip.training.settings import TrainConfig, train_config
from ctclip.training.stages import attach_pseudo_labels, build_model
from ctcommon.settings import to_mapping

_logger = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped at a signal (or `train.stop_after`) after saving a checkpoint."""

    def __init__(self, step: int, checkpoint: Path, reason: str):
        super().__init__(f'stopped at step {step} ({reason}); checkpoint {checkpoint}')
        self.step, self.checkpoint, self.reason = step, checkpoint, reason


class Trainer:
    def __init__(self, cfg: TrainConfig | Mapping):
        self.cfg = train_config(cfg)  # a copy, validated before any work
        train = self.cfg.train
        if not train.output_dir:
            raise ValueError('train.output_dir must be set')
        self.out = Path(train.output_dir)
        self.ckpt_dir = self.out / 'checkpoints'
        self.seed = train.seed
        self.rank, self.world, self.local_rank = init_distributed()
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            dump_config(to_mapping(self.cfg), self.out / 'resolved_config.yaml')
        torch.manual_seed(self.seed)  # the same initial weights on every rank
        model_cfg = to_mapping(self.cfg.model)
        if self.cfg.data.window:  # data.window wins over the model config's own
            model_cfg['overrides'] = {**model_cfg['overrides'], 'window': self.cfg.data.window}
        self.model = build_model(model_cfg, train.init_from)
        self.model.set_channels_last(self.cfg.model.channels_last)
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = train.cudnn_benchmark
        if not self.cfg.data.window and self.model.config.get('window'):
            # the model config (or the stage-1 model stage 2 starts from) names its input window
            self.cfg.data.window = self.model.config['window']
        self.train_ds, self.val_ds = build_datasets(
            to_mapping(self.cfg.data), model_tokenizer(self.model), self.seed
        )
        self.model.config['window'] = input_window(self.model, self.train_ds.window).spec
        if train.pseudo_labels:
            self._barrier()
            attach_pseudo_labels(self.model, self.train_ds, self.out, self.rank, self.world)
        self.accum = train.grad_accum
        self.micro = self.cfg.data.batch_size
        self.total_steps = self._total_steps()
        self._init_deepspeed()

    def _resolved_loss_cfg(self) -> dict:
        """The loss config with `bce.pos_weight: balanced` turned into numbers from the labels
        the image BCE sees: the paired training studies' (the same on every rank and on resume)."""
        from ctclip.losses import balanced_pos_weight

        loss_cfg = copy.deepcopy(self.cfg.loss)
        bce = loss_cfg.get('bce')
        if isinstance(bce, Mapping) and bce.get('pos_weight') == 'balanced':
            weights = balanced_pos_weight(self.train_ds.table.labels[self.train_ds.paired])
            loss_cfg['bce'] = {**bce, 'pos_weight': weights}
            _logger.info('loss.bce.pos_weight balanced from the training labels: %s', weights)
        return loss_cfg

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _total_steps(self) -> int:
        train = self.cfg.train
        global_batch = self.micro * self.accum * self.world
        per_epoch = len(self.train_ds) // global_batch
        if per_epoch < 1:
            raise ValueError(
                f'{len(self.train_ds)} training volumes cannot fill one global batch of {global_batch}'
            )
        if train.steps:
            return train.steps
        if train.epochs:
            return int(math.ceil(train.epochs * per_epoch))
        raise ValueError('train.steps or train.epochs must be set')

    def _init_deepspeed(self) -> None:
        import deepspeed

        resume_stage = ckpt.checkpoint_zero_stage(self.ckpt_dir) if self.cfg.train.resume else None
        ds_json = deepspeed_config(self.cfg, self.world, has_batchnorm(self.model), resume_stage)
        self.autocast = uses_autocast(ds_json)
        self.bf16_weights = weight_dtype(ds_json) is not None
        sched = self.cfg.schedule
        factor = lr_lambda(sched.warmup_steps, self.total_steps, sched.min_lr_ratio)
        freeze_unused_text(self.model, self.cfg.loss)
        groups = param_groups(self.model, self.cfg.optim.weight_decay)
        self.scalar_names = lift_scalar_parameters(self.model)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            model_parameters=groups,
            config=ds_json,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        )
        if self.world == 1 and self.engine.zero_optimization_stage() == 0:
            # One rank has nothing to average, but DeepSpeed still flattens, "all-reduces" and
            # copies back every gradient: 30 ms of a 0.36 s CPU step (benchmarks/perf train).
            self.engine.enable_backward_allreduce = False
        from ctclip.losses import create_loss

        self.loss_fn = create_loss(self._resolved_loss_cfg(), rank=self.rank, world_size=self.world)
        device = self.engine.device
        self.prompts = {k: v.to(device) for k, v in prompt_inputs(self.loss_fn, self.model).items()}
        self.order = {
            'seed': self.seed,
            'global_batch': self.micro * self.accum * self.world,
            'train_size': len(self.train_ds),
            'total_steps': self.total_steps,
        }
        self.start_step = 0
        if self.cfg.train.resume:
            self.start_step = ckpt.load_checkpoint(self.engine, self.ckpt_dir, self.order)

    def _loader(self) -> Iterator[dict]:
        sampler = StepSampler(
            len(self.train_ds),
            self.micro,
            self.world,
            self.rank,
            self.accum,
            self.seed,
            self.total_steps,
            self.start_step,
        )
        workers = self.cfg.data.num_workers
        loader = torch.utils.data.DataLoader(
            self.train_ds,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=self.cfg.data.prefetch_factor if workers else None,
        )
        return iter(loader)

    def _micro_step(self, batch: dict, step: int, micro: int) -> dict[str, torch.Tensor]:
        reseed(self.seed, step, micro, self.rank)
        device = self.engine.device
        inputs = model_inputs(batch, self.cfg.loss, device)
        inputs.update(self.prompts)
        outputs = self.engine(**inputs)
        losses = self.loss_fn(as_float(outputs), to_device(batch, device))
        self.engine.backward(losses['loss'])
        self.engine.step()
        return {
            k: v.detach().float()
            for k, v in losses.items()
            if isinstance(v, torch.Tensor) and v.dim() == 0
        }

    def _reduce(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        keys = sorted(sums)
        values = torch.stack([sums[k] for k in keys]) / self.accum
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return {
            ('loss' if k == 'loss' else f'loss/{k}'): float(v)
            for k, v in zip(keys, values, strict=False)
        }

    def fit(self) -> Path:
        train = self.cfg.train
        logger = RunLogger(self.out, self.rank, self.total_steps, self.start_step, train.progress)
        stop = ckpt.StopSignal().install()
        stop_after = train.stop_after
        last_saved, step = self.start_step, self.start_step
        try:
            batches, timer = self._loader(), StepTimer()
            for step in range(self.start_step + 1, self.total_steps + 1):
                sums: dict[str, torch.Tensor] = {}
                for micro in range(self.accum):
                    batch = next(batches)
                    timer.lap('data')
                    for k, v in self._micro_step(batch, step - 1, micro).items():
                        sums[k] = sums.get(k, 0) + v
                    timer.lap('compute')
                self._log_step(logger, step, sums, timer)
                if self._want_eval(step):
                    logger.log(step, self.evaluate())
                interrupt = stop.should_stop() or (
                    stop_after and step - self.start_step >= stop_after
                )
                if interrupt or step % train.ckpt_every == 0 or step == self.total_steps:
                    path = ckpt.save_checkpoint(
                        self.engine, self.ckpt_dir, step, self.order, train.keep_checkpoints
                    )
                    last_saved = step
                if interrupt:
                    raise Interrupted(step, path, stop.received or 'train.stop_after')
            if last_saved != self.total_steps:
                ckpt.save_checkpoint(
                    self.engine,
                    self.ckpt_dir,
                    self.total_steps,
                    self.order,
                    train.keep_checkpoints,
                )
            self.engine.module.config['recipe'] = self.train_ds.recipe
            final = ckpt.export_model(
                self.engine, self.engine.module, self.out / 'final', self.scalar_names
            )
        finally:
            stop.restore()
            logger.close()
            if self.rank == 0:
                plot_curves(self.out / 'metrics.jsonl', self.out / 'training_curves.png')
        return final

    def _log_step(self, logger: RunLogger, step: int, sums: dict, timer: StepTimer) -> None:
        every = self.cfg.train.log_every
        if step % every and step != self.total_steps:
            logger.advance()
            return
        values = self._reduce(sums)
        values['lr'] = float(self.scheduler.get_last_lr()[0])
        values.update(timer.pop())
        values['epoch'] = (step - 1) // max(len(self.train_ds) // self.order['global_batch'], 1)
        logger.log(step, values, advance=1)

    def _want_eval(self, step: int) -> bool:
        every = self.cfg.train.eval_every
        return (
            self.val_ds is not None
            and every > 0
            and (step % every == 0 or step == self.total_steps)
        )

    def evaluate(self) -> dict[str, float]:
        return evaluate(
            self.engine.module,
            self.val_ds,
            self.rank,
            self.world,
            self.cfg.train.eval_batch_size,
            self.cfg.train.zero_shot_templates,
            self.autocast or self.bf16_weights,
        )


class StepTimer:
    """Wall time spent waiting for data versus computing, for the log and the loader benchmark."""

    def __init__(self) -> None:
        self.data = self.compute = 0.0
        self._mark = time.perf_counter()

    def lap(self, kind: str) -> None:
        now = time.perf_counter()
        setattr(self, kind, getattr(self, kind) + now - self._mark)
        self._mark = now

    def pop(self) -> dict[str, float]:
        out = {'time/data_s': self.data, 'time/compute_s': self.compute}
        self.data = self.compute = 0.0
        return out


def final_metrics(output_dir: str | Path) -> dict[str, Any]:
    """The last validation record of a run (for tests and the demo)."""
    from ctclip.training.run_log import read_metrics

    evals = [
        r for r in read_metrics(Path(output_dir) / 'metrics.jsonl') if 'val/zero_shot_auroc' in r
    ]
    return evals[-1] if evals else {}
