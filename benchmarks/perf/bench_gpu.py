"""Stage 2 on one GPU at the published recipe: volumes/s, peak memory and model FLOP utilisation.

ResNet-18 (1-channel stride-2 stem) on 192 x 192 x 96 crops of a li2025-grid cache, bf16, CLIP
loss, with a BERT-base-sized text tower at 256 tokens (CXR-BERT's shape; random weights, since
nothing is downloaded: speed does not depend on the values), under the `VARIANTS` of batch size,
ZeRO stage and memory layout. Our engine is compared with a bare PyTorch loop (autocast bf16,
AdamW) in the same run, steps interleaved, and the HDF5 loader with one batch that is already in
host memory. Without CUDA the area reports nothing.

FLOPs per step are counted once with `torch.utils.flop_counter` (forward + backward of both towers);
MFU = FLOPs / step time / the GPU's dense bf16 peak (`CTCLIP_PEAK_TFLOPS` overrides the table).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import traceback
from pathlib import Path

from benchmarks.perf.bench_train import BareLoop, interleaved, write_cohort
from benchmarks.perf.common import Row

AREA = 'gpu'
# dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {'H100 80GB HBM3': 989.4, 'H200': 989.4, 'H100 PCIe': 756.0, 'A100': 312.0}
SHAPE = (120, 240, 240)  # the li2025 cache grid (z, y, x)
CROP = [96, 192, 192]


def peak_tflops(name: str) -> float | None:
    if os.environ.get('CTCLIP_PEAK_TFLOPS'):
        return float(os.environ['CTCLIP_PEAK_TFLOPS'])
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def text_tower() -> dict:
    """CXR-BERT's shape (BERT-base, 12 x 768, 256 tokens) with random weights."""
    tokenizer = os.environ.get('CTCLIP_TOKENIZER_DIR')
    if not tokenizer:
        from ctclip.towers.text import minilm_dir

        tokenizer = str(minilm_dir())
    return {
        'source': 'random',
        'tokenizer': tokenizer,
        'width': 768,
        'layers': 12,
        'heads': 12,
        'pooling': 'cls',
        'context_length': 256,
    }


def stage2_config(paths: dict, out: Path, batch: int, workers: int, **model: object) -> dict:
    from ctclip.config import load_config
    from ctclip.training import with_defaults
    from ctcommon.settings import to_mapping

    cfg = to_mapping(with_defaults(load_config('train/stage2-clip')))  # a mapping to edit
    cfg['model'].update(name='resnet3d-18-minilm', overrides={'text_cfg': text_tower()}, **model)
    cfg['data'].update(paths, val_split=None, batch_size=batch, num_workers=workers, crop_zyx=CROP)
    cfg['train'].update(
        output_dir=str(out), steps=10**4, epochs=None, log_every=10**6, ckpt_every=10**6,
        eval_every=0, progress=False,
    )  # fmt: skip
    return cfg


def step_flops(bare: BareLoop, batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        bare.step(batch)
    return float(counter.get_total_flops())


def synced(fn):
    """fn, then wait for the GPU, so a wall-clock timer sees the kernels it queued."""
    import torch

    def call():
        fn()
        torch.cuda.synchronize()

    return call


def measure(cfg: dict, tag: str, warmup: int, steps: int, loader_row: bool = True) -> list[Row]:
    """Engine vs bare loop, and loader vs memory, for one configuration."""
    import torch

    from ctclip.training.trainer import Trainer

    name = torch.cuda.get_device_name()
    peak = peak_tflops(name)
    batch_size = int(cfg['data']['batch_size'])
    trainer = Trainer(cfg)
    loader = trainer._loader()
    fixed = next(loader)
    engine_step = synced(lambda: trainer._micro_step(fixed, 0, 0))
    for _ in range(warmup):  # cuDNN's algorithm search happens here
        engine_step()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        engine_step()
    peak_mib = torch.cuda.max_memory_allocated() / 2**20
    bare = BareLoop(
        cfg,
        trainer.model.config['window'],
        torch.device('cuda'),
        bf16=True,
        channels_last=trainer.model.channels_last,
    )
    flops = step_flops(bare, fixed)
    bare_step = synced(lambda: bare.step(fixed))
    t_engine, t_bare = interleaved(engine_step, bare_step, steps, warmup)
    if loader_row:
        loader_step = synced(lambda: trainer._micro_step(next(loader), 0, 0))
        t_loader, t_memory = interleaved(loader_step, engine_step, steps, warmup)
    med = statistics.median
    engine_s = med(t_engine)
    mfu = flops / engine_s / (peak * 1e12) if peak else None
    workers = cfg['data']['num_workers']
    rows = [
        Row(
            AREA, f'stage-2 engine step, {tag}', batch_size / engine_s, 'vol/s',
            batch_size / med(t_bare), 'bare PyTorch loop (autocast bf16)',
            med(t_bare) / engine_s, 'overhead <= 10% (ratio >= 0.91)', 1 / 1.1,
            f'{name}; step {engine_s * 1000:.1f} ms (bare {med(t_bare) * 1000:.1f} ms);'
            f' {flops / 1e12:.2f} TFLOP per step; MFU '
            + (f'{mfu:.1%} of {peak:.0f} TFLOP/s' if mfu else 'unknown (peak unknown)')
            + f'; peak memory {peak_mib:,.0f} MiB (torch.cuda.max_memory_allocated, engine only)',
            extra={'mfu': mfu, 'peak_mib': peak_mib, 'tflop_per_step': flops / 1e12},
        )
    ]  # fmt: skip
    if loader_row:
        rows.append(Row(
            AREA, f'stage-2 step with the HDF5 loader, {tag}', batch_size / med(t_loader),
            'vol/s', batch_size / med(t_memory), 'batch already in memory',
            med(t_memory) / med(t_loader), 'within 10% (ratio >= 0.91)', 1 / 1.1,
            f'{workers} DataLoader workers, blosc-lz4 cache on the {SHAPE} li2025 grid',
        ))  # fmt: skip
    return rows


# (batch, DeepSpeed config, channels-last, loader row): the configs' recipe (batch 8, ZeRO-2) first,
# then ZeRO-0 (one GPU has nothing to shard), then batch 32 with each
VARIANTS = [
    (8, 'zero2', False, True),
    (8, 'zero0', False, False),
    (32, 'zero2', False, False),
    (32, 'zero0', True, True),
]


def run(quick: bool) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        print('gpu: no CUDA device; nothing measured')
        return []
    variants = VARIANTS[:1] if quick else VARIANTS
    warmup, steps = (3, 5) if quick else (5, 20)
    workers = min(16, os.cpu_count() or 1)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_cohort(root, 4 * max(v[0] for v in variants), SHAPE, 'li2025')
        for batch_size, zero, channels_last, loader in variants:
            tag = f'batch {batch_size}, {zero}, {"NDHWC" if channels_last else "NCDHW"}'
            out = root / tag.replace(', ', '_').replace(' ', '')
            cfg = stage2_config(paths, out, batch_size, workers, channels_last=channels_last)
            cfg['deepspeed']['config'] = zero
            # by name: one rank would otherwise run every preset as ZeRO-0 (deepspeed_config)
            cfg['deepspeed']['zero_stage'] = int(zero[len('zero') :][:1])
            try:
                new = measure(cfg, tag, warmup, steps, loader)
            except Exception as e:  # one failing variant must not hide the others' numbers
                traceback.print_exc()
                print(f'gpu: {tag} failed: {type(e).__name__}: {e}', flush=True)
                continue
            finally:
                torch.cuda.empty_cache()
            rows += new
            print(f'gpu: {tag}: {new[0].notes}', flush=True)
    return rows
