"""Reports: metrics.json, markdown, HTML and PNGs that render; published numbers marked as such."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np

from benchmarks.bootstrap import BootstrapConfig
from benchmarks.report import write_report
from benchmarks.scoring import score, score_retrieval
from benchmarks.tables import Table


def test_write_report_renders_everything(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f'valid_{i}_a_1.nii.gz' for i in range(80)]
    y = (rng.random((80, 3)) < 0.4).astype(float)
    y[:, 2] = 0  # an undefined class
    s = np.clip(0.4 * y + 0.6 * rng.random((80, 3)), 0, 1)
    boot = BootstrapConfig(n_draws=30)
    metrics = {
        'title': 'Toy run',
        'protocol': 'ctclip-zero-shot',
        'benchmark': 'ct-rate',
        'classification': score(
            Table(ids, ['A', 'B', 'C'], s), Table(ids, ['A', 'B', 'C'], y), bootstrap=boot
        ),
        'retrieval': score_retrieval(
            rng.normal(size=(80, 8)), rng.normal(size=(80, 8)), y, ids, bootstrap=boot
        ),
    }
    paths = write_report(metrics, tmp_path)
    for key in ('roc', 'auroc_bars', 'retrieval'):
        image = mpimg.imread(paths[key])
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0
    data = json.loads((tmp_path / 'metrics.json').read_text(encoding='utf-8'))
    assert data['classification']['per_class']['C']['auroc']['value'] is None  # NaN -> null
    assert data['headline']['mean AUROC']['ci_low'] is not None
    assert 'numpy' in data['versions'] and data['classification']['bootstrap']['n_draws'] == 30
    assert '\n\nVersions:' in (tmp_path / 'report.md').read_text(
        encoding='utf-8'
    )  # the list is closed first
    md = (tmp_path / 'report.md').read_text(encoding='utf-8')
    assert 'Published results (their protocols, not recomputed)' in md
    assert '| this run (our protocol, above) | ' in md  # ours next to the published rows
    assert '| CT-CLIP | 73.1 | 62.9 |' in md and '![roc](roc_curves.png)' in md
    assert 'F1 (positive class)' in md and 'Undefined (one label value only)' in md
    html = (tmp_path / 'report.html').read_text(encoding='utf-8')
    separators = [line for line in md.splitlines() if line.startswith('|---')]
    assert html.count('<table>') == len(separators) and '<img src="auroc_bars.png"' in html
    assert not list(tmp_path.glob('.*.tmp*'))  # atomic writes leave no temp files
