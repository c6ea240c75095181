"""`ctclip synth`: write a synthetic chest-CT cohort (volumes, reports, labels, truth)."""

from __future__ import annotations

import argparse

HELP = 'generate a synthetic chest-CT cohort with reports (CT-RATE or RAD-ChestCT layout)'
DESCRIPTION = """Generate a synthetic chest-CT cohort whose findings are rendered into the voxels and
described in CT-RATE-style reports.

  ctclip synth --out data/synth --n 200 --seed 0 --small --workers 2
  ctclip synth --out data/rad --n 100 --layout rad-chestct --small
  ctclip synth --out data/synth --n 200 --small --test-min-count 25   # + a stratified test split

CT-RATE layout: dataset/{train,valid,test}[_fixed]/..., metadata, reports and label CSVs, truth.jsonl.
--test-min-count K adds a `test` split of extra patients (never in train or validation) chosen
so that every class has at least K positive and K negative volumes (RAD-ChestCT: `tst` ids).
RAD-ChestCT layout: radchestct/volumes/*.npz, imgtrain/imgvalid/imgtest.csv, rad_chestct_labels.csv,
reports.csv, spacing.json, truth.jsonl. A rerun with the same settings resumes.
Config keys (YAML or key=value): synth.out, synth.n, synth.seed, synth.layout, synth.small, synth.workers,
synth.test_min_count.
"""

DEFAULTS = {
    'synth': {
        'out': None,
        'n': 200,
        'seed': 0,
        'layout': 'ct-rate',
        'small': False,
        'workers': 1,
        'test_min_count': 0,
    }
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', help='output folder (the cohort root)')
    parser.add_argument('--n', type=int, help='number of scans (= reports); default 200')
    parser.add_argument(
        '--seed', type=int, help='random seed; the cohort is a function of it (default 0)'
    )
    parser.add_argument(
        '--layout', choices=['ct-rate', 'rad-chestct'], help='folder layout (default ct-rate)'
    )
    parser.add_argument(
        '--small',
        action='store_true',
        default=None,
        help='coarse grids (128-160 px, 4-6 mm slices) for tests and the demo',
    )
    parser.add_argument(
        '--workers', type=int, help='worker processes (output does not depend on it)'
    )
    parser.add_argument(
        '--test-min-count',
        type=int,
        help='add a test split with at least this many positive and negative volumes per class',
    )
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    parser.add_argument(
        '--gallery',
        action='store_true',
        help='also draw DIR/gallery.png: one slice per finding with its box',
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from ctclip.config import resolve
    from ctcommon.settings import check_keys
    from synth import generate_cohort

    flags = {
        f'synth.{k}': getattr(args, k)
        for k in ('out', 'n', 'seed', 'layout', 'small', 'workers', 'test_min_count')
    }
    full = resolve(DEFAULTS, args.config, flags, overrides)
    check_keys(full, DEFAULTS)  # a misspelt setting fails before any scan is drawn
    check_keys(full['synth'], DEFAULTS['synth'], 'synth')
    cfg = full['synth']
    if not cfg.get('out'):
        raise SystemExit('ctclip synth: --out (or synth.out=DIR) is required')
    root = generate_cohort(
        Path(cfg['out']),
        n=int(cfg['n']),
        seed=int(cfg['seed']),
        layout=str(cfg['layout']),
        small=bool(cfg['small']),
        workers=int(cfg['workers']),
        progress=not args.no_progress,
        test_min_count=int(cfg['test_min_count'] or 0),
    )
    print(f'synthetic cohort written to {root}')
    if args.gallery:
        from synth.gallery import finding_gallery

        print(f'gallery: {finding_gallery(root, root / "gallery.png")}')
    return 0
