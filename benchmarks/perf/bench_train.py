"""Training step time: our DeepSpeed engine against a bare PyTorch loop, and the loader against memory.

Same model, batch, loss, optimizer settings and precision, measured in the same run with the two
loops interleaved step by step (so background load hits both alike); the median step is compared.
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.perf.common import Row

AREA = 'train'
MODEL = 'resnet3d-tiny-minilm'


def write_cohort(
    root: Path, n: int, shape: tuple[int, int, int], recipe_name: str = 'small'
) -> dict[str, str]:
    """A cache of n random volumes on a recipe's grid (shape overrides it), plus labels and reports.

    Volumes are smooth random fields plus noise, so blosc compresses them somewhat as it does CT.
    """
    from llm_labeling.schema import FINDINGS
    from preprocessing.cache import CacheWriter
    from preprocessing.recipes import RECIPES

    rng = np.random.default_rng(0)
    recipe = RECIPES[recipe_name]
    crop = tuple(min(c, s) for c, s in zip(recipe.train_crop_zyx, shape, strict=True))
    recipe = recipe.replace(shape_zyx=shape, train_crop_zyx=crop)
    labels = rng.integers(0, 2, (n, len(FINDINGS)))
    coarse = tuple(-(-s // 4) for s in shape)
    with CacheWriter(root / 'cache.h5', recipe) as writer:
        for i in range(n):
            field = rng.normal(-600, 350, coarse).repeat(4, 0).repeat(4, 1).repeat(4, 2)
            noise = rng.normal(0, 20, shape)
            volume = (field[: shape[0], : shape[1], : shape[2]] + noise).clip(-1024, 1500)
            volume = volume.astype(np.int16)
            writer.write(
                f'train_{i}_a_1',
                volume,
                {'patient_id': f'p{i}', 'split': 'train', 'spacing_zyx': list(recipe.spacing_zyx)},
            )
    with (root / 'labels.csv').open('w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['report_id', *FINDINGS])
        w.writerows([f'train_{i}_a_1', *labels[i]] for i in range(n))
    with (root / 'reports.csv').open('w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['VolumeName', 'Findings_EN', 'Impressions_EN'])
        for i in range(n):
            text = (
                ' '.join(f'{FINDINGS[k]} is present.' for k in np.flatnonzero(labels[i]))
                or 'Normal.'
            )
            w.writerow([f'train_{i}_a_1', text, 'Not given.'])
    return {
        'cache': str(root / 'cache.h5'),
        'labels': str(root / 'labels.csv'),
        'reports': str(root / 'reports.csv'),
    }


def _config(paths: dict, out: Path, batch: int, steps: int, workers: int) -> dict:
    from ctclip.training import with_defaults
    from ctcommon.settings import to_mapping

    return to_mapping(
        with_defaults(
            {
                'model': {'name': MODEL},
                'data': {
                    **paths,
                    'val_split': None,
                    'batch_size': batch,
                    'num_workers': workers,
                    'max_length': 64,
                },
                'loss': {'bce': 1.0, 'clip': 1.0},
                'optim': {'lr': 1e-4},
                'deepspeed': {'config': 'zero0', 'precision': 'fp32'},
                'train': {
                    'output_dir': str(out),
                    'steps': steps,
                    'log_every': 10**6,
                    'ckpt_every': 10**6,
                    'progress': False,
                },
            }
        )
    )


class BareLoop:
    """The same step in plain PyTorch: forward, loss, backward, clip, AdamW.

    `bf16` runs the forward under `torch.autocast` (fp32 weights), which is how a plain PyTorch
    user trains in bf16.
    """

    def __init__(
        self,
        cfg: dict,
        window: list,
        device=None,
        bf16: bool = False,
        channels_last: bool = False,
    ) -> None:
        import torch

        from ctclip.losses import create_loss
        from ctclip.training.optimizer import param_groups
        from ctclip.training.stages import build_model

        torch.manual_seed(0)
        self.device = device or torch.device('cpu')
        self.bf16 = bf16
        self.model = build_model(cfg['model'], None).to(self.device)
        self.model.config['window'] = window  # the model windows the loader's int16 crops
        self.model.set_channels_last(channels_last)
        o = cfg['optim']
        self.opt = torch.optim.AdamW(
            param_groups(self.model, o['weight_decay']),
            lr=o['lr'],
            betas=tuple(o['betas']),
            eps=o['eps'],
        )
        self.loss_fn, self.loss_cfg, self.clip = (
            create_loss(cfg['loss']),
            cfg['loss'],
            o['grad_clip'],
        )

    def step(self, batch: dict) -> None:
        import torch

        from ctclip.training.batch import as_float, model_inputs, to_device

        inputs = model_inputs(batch, self.loss_cfg, self.device)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            outputs = self.model(**inputs)
        loss = self.loss_fn(as_float(outputs), to_device(batch, self.device))['loss']
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()


def interleaved(a, b, steps: int, warmup: int = 0) -> tuple[list[float], list[float]]:
    """Wall times of a and b run in turn, so background load hits both alike; the first `warmup`
    rounds are run and dropped."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(steps):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return ta, tb


def _batch_build_times(trainer, batch_size: int, steps: int) -> list[float]:
    from ctclip.data.dataset import collate

    ds, times = trainer.train_ds, []
    for step in range(steps):
        start = time.perf_counter()
        collate([ds[(step + 1, (step * batch_size + i) % len(ds))] for i in range(batch_size)])
        times.append(time.perf_counter() - start)
    return times


def run(quick: bool) -> list[Row]:
    import torch

    from ctclip.training.trainer import Trainer

    batch_size, steps, warmup = (4, 4, 1) if quick else (8, 12, 2)
    shape = (56, 112, 112)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_cohort(root, 4 * batch_size, shape)
        cfg = _config(paths, root / 'run', batch_size, 10**4, workers=1)
        trainer = Trainer(cfg)
        bare = BareLoop(cfg, trainer.model.config['window'])
        loader = trainer._loader()
        fixed = next(loader)
        engine_step = lambda: trainer._micro_step(fixed, 0, 0)  # noqa: E731
        bare_step = lambda: bare.step(fixed)  # noqa: E731
        t_engine, t_bare = interleaved(engine_step, bare_step, steps, warmup)
        loader_step = lambda: trainer._micro_step(next(loader), 0, 0)  # noqa: E731
        t_loader, t_memory = interleaved(loader_step, engine_step, steps, warmup)
        trainer.cfg.data.num_workers = 0
        inline = trainer._loader()
        inline_step = lambda: trainer._micro_step(next(inline), 0, 0)  # noqa: E731
        t_inline, t_memory0 = interleaved(inline_step, engine_step, steps, warmup)
        t_build = _batch_build_times(trainer, batch_size, steps)
    med = statistics.median
    threads = torch.get_num_threads()
    note = f'{MODEL}, batch {batch_size}, crop 48x96x96, fp32, ZeRO-0, CLIP+BCE, {threads} threads, median of {steps} interleaved steps'
    return [
        Row(
            AREA,
            'engine step time',
            med(t_engine),
            's',
            med(t_bare),
            'bare PyTorch loop',
            med(t_bare) / med(t_engine),
            'overhead <= 10% (ratio >= 0.91)',
            1 / 1.1,
            note,
        ),
        Row(
            AREA,
            'step time with the HDF5 loader',
            med(t_loader),
            's',
            med(t_memory),
            'batch in memory',
            med(t_memory) / med(t_loader),
            'within 10% (ratio >= 0.91)',
            1 / 1.1,
            f'1 DataLoader worker reading crops from the blosc HDF5 cache; it shares the '
            f'{os.cpu_count()} cores with {threads} torch threads',
        ),
        Row(
            AREA,
            'step time with the HDF5 loader in the training process',
            med(t_inline),
            's',
            med(t_memory0),
            'batch in memory',
            med(t_memory0) / med(t_inline),
            'within 10% (ratio >= 0.91)',
            1 / 1.1,
            'data.num_workers=0: crops are read between steps, so no process competes with '
            'the torch threads (the better setting where cores are few)',
        ),
        Row(
            AREA,
            'batch build time (read int16 crops, collate; 1 process)',
            med(t_build),
            's',
            med(t_memory),
            'engine step',
            med(t_memory) / med(t_build),
            'loader faster than the step (ratio >= 1)',
            1.0,
            f'{batch_size} random 48x96x96 crops from 56x112x112 cached volumes; the window runs '
            'in the model (its first op), not here',
        ),
    ]
