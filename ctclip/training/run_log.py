"""Progress bar, TensorBoard events, metrics.jsonl and the training-curves PNG of a run.

Only rank 0 writes. On resume the JSONL records past the resumed step are dropped, because the
resumed run writes them again (identically, resume being exact).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ctcommon.atomic import atomic_path, write_text

_logger = logging.getLogger(__name__)


class RunLogger:
    def __init__(
        self, output_dir: Path, rank: int, total_steps: int, start_step: int, progress: bool = True
    ):
        self.rank, self.path = rank, output_dir / 'metrics.jsonl'
        self.bar = self.writer = None
        if rank != 0:
            return
        _truncate_after(self.path, start_step)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, desc='train', unit='step', dynamic_ncols=True
            )
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(output_dir / 'tensorboard'), purge_step=start_step or None
            )
        except ImportError:  # tensorboard is in the [train] extra
            _logger.warning('tensorboard is not installed: no event files are written')

    def log(self, step: int, values: dict[str, Any], advance: int = 0) -> None:
        if self.rank != 0:
            return
        record = {'step': step, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open('a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')
        if self.writer is not None:
            for key, value in record.items():
                if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
        if self.bar is not None:
            if advance:
                self.bar.update(advance)
            shown = {
                k: f'{v:.4g}'
                for k, v in values.items()
                if k in ('loss', 'lr', 'val/zero_shot_auroc')
            }
            if shown:
                self.bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _plain(value: Any) -> Any:
    if hasattr(value, 'item'):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text(encoding='utf-8').splitlines()
        if line.strip() and json.loads(line).get('step', 0) <= step
    ]
    write_text(path, ''.join(line + '\n' for line in keep))


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    return (
        [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
        if path.exists()
        else []
    )


def plot_curves(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Loss terms, learning rate and validation AUROC against the step, one panel each."""
    records = read_metrics(metrics_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    loss_keys = sorted({k for r in records for k in r if k.startswith('loss')})
    panels = [
        ('loss terms', loss_keys),
        ('learning rate', ['lr']),
        ('validation AUROC', ['val/zero_shot_auroc', 'val/head_auroc']),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, keys) in zip(axes, panels, strict=False):
        for key in keys:
            points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                xs, ys = zip(*points, strict=False)
                ax.plot(xs, ys, marker='o' if len(points) < 30 else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel('step')
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=100, format='png')
    finally:
        plt.close(fig)
    return out_png
