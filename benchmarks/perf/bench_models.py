"""Image-tower step cost: why the towers use GreenRFM's 1-channel stride-2 stem (and a 3^3 stem kernel
in the tiny demo model). `python -m benchmarks.perf --only models [--quick]`."""

from __future__ import annotations

import logging
import time

import torch

from benchmarks.perf.common import Row, timed

_logger = logging.getLogger(__name__)


def _step(tower: torch.nn.Module, shape: tuple[int, ...]):
    x = torch.randn(shape)

    def step() -> None:
        tower.zero_grad(set_to_none=True)
        pooled, _ = tower(x)
        pooled.square().sum().backward()

    return step


def _paired_times(ours, baseline, rounds: int, warmup: bool = True) -> tuple[float, float]:
    """Best time of each, measured alternately so that load from other processes hits both alike."""
    if warmup:
        ours(), baseline()
    best = [float('inf'), float('inf')]
    for _ in range(rounds):
        for i, fn in enumerate((ours, baseline)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def _stem_stride_row(quick: bool) -> Row:
    from ctclip.towers.image import ResNet3dTower

    widths = (16, 32, 64, 128) if quick else (64, 128, 256, 512)
    # The published crop: the stem's share of the cost grows with the input (one stride-1 step is minutes).
    shape = (1, 1, 32, 64, 64) if quick else (1, 1, 96, 192, 192)
    ours_step = _step(
        ResNet3dTower(layers=(2, 2, 2, 2), block_inplanes=widths, stem_stride=2), shape
    )
    base_step = _step(
        ResNet3dTower(layers=(2, 2, 2, 2), block_inplanes=widths, stem_stride=1), shape
    )
    ours_step()  # warm-up (oneDNN primitives); the stride-1 step is too slow to run twice in full mode
    ours, base = _paired_times(ours_step, base_step, rounds=2 if quick else 1, warmup=quick)
    return Row(
        area='models',
        what=f'ResNet-18{" (narrow)" if quick else ""} forward+backward, batch 1, {shape[2]}x{shape[3]}x{shape[4]}',
        ours=ours,
        unit='s',
        baseline=base,
        baseline_name='stride-1 stem (MONAI default)',
        ratio=base / ours,
        target='stride-2 stem >= 5x cheaper (the issue measured ~10x)',
        target_ratio=None if quick else 5.0,  # quick inputs are too small for the stem to dominate
    )


def _stem_kernel_row(quick: bool) -> Row:
    from ctclip.towers.image import ResNet3dTower

    shape = (4, 1, 32, 64, 64) if quick else (8, 1, 48, 96, 96)
    kwargs = {'layers': (1, 1, 1, 1), 'block_inplanes': (8, 16, 32, 64)}
    ours, base = _paired_times(
        _step(ResNet3dTower(stem_kernel=3, **kwargs), shape),
        _step(ResNet3dTower(stem_kernel=7, **kwargs), shape),
        rounds=4,
    )
    return Row(
        area='models',
        what=f'tiny demo tower forward+backward, batch {shape[0]}, {shape[2]}x{shape[3]}x{shape[4]}',
        ours=ours,
        unit='s',
        baseline=base,
        baseline_name='7^3 stem kernel',
        ratio=base / ours,
        target='3^3 stem kernel >= 1.5x cheaper on CPU',
        target_ratio=None if quick else 1.5,
        notes='the 7^3 kernel weight gradient of a 1-channel stem is slow in oneDNN on CPU',
    )


def _text_row(quick: bool) -> Row:
    from ctclip.towers.text import TextCfg, TextTower

    tower = TextTower(TextCfg(source='minilm', pooling='mean')).train()
    batch, length = (4, 64) if quick else (8, 96)
    tokens = tower.tokenize(['word ' * length] * batch, max_length=length)

    def step() -> None:
        tower.zero_grad(set_to_none=True)
        tower(tokens['input_ids'], tokens['attention_mask']).square().sum().backward()

    return Row(
        area='models',
        what=f'MiniLM text tower forward+backward, batch {batch} x {length} tokens',
        ours=timed(step, repeat=3, warmup=1),
        unit='s',
        notes='the stage-2 text cost per step; it grows linearly with data.max_length',
    )


def run(quick: bool) -> list[Row]:
    torch.manual_seed(0)
    return [_stem_stride_row(quick), _stem_kernel_row(quick), _text_row(quick)]
