"""`ctclip preprocess`: a cohort (folder or manifest.csv) to an HDF5 cache; `merge` joins shards."""

from __future__ import annotations

import argparse
import json
import logging
import sys

_logger = logging.getLogger(__name__)

HELP = 'CT cohort (NIfTI, DICOM, RAD-ChestCT .npz, CT-RATE tree) -> HDF5 cache of int16 HU'
DESCRIPTION = """\
Preprocess a cohort into a training-ready HDF5 cache (int16 HU, canonical LPS, recipe grid).

  ctclip preprocess --input DIR|manifest.csv --out cache.h5 [--recipe li2025|ctclip|merlin|small]
                    [--metadata metadata.csv ...] [--workers N] [--shard i/n] [--strict] [--limit N]
  ctclip preprocess merge --out merged.h5 [SHARD.h5 ...]
  ctclip preprocess verify CACHE.h5        (checks every volume against its checksum)

A killed run resumes where it stopped when rerun with the same arguments. With --shard i/n
(0-based) a job-array task writes <out>.shardIIII-of-NNNN.h5; `merge` then exposes all shards as
one cache without copying (with no SHARD files it takes every <out>.shard*-of-*.h5).
Reports are written next to the cache: .failures.csv/.json, .summary.json, .qc.json, .qc.png.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--input', help='cohort folder (CT-RATE tree, NIfTI/DICOM/.npz folder) or manifest.csv'
    )
    parser.add_argument('--out', help='output cache file (.h5)')
    parser.add_argument('--recipe', help='named recipe: li2025 (default), ctclip, merlin, small')
    parser.add_argument(
        '--metadata', nargs='+', help='CT-RATE metadata CSV(s) with geometry and rescale columns'
    )
    parser.add_argument(
        '--prefer-version', choices=['v2', 'v1'], help='CT-RATE file version when both exist (v2)'
    )
    parser.add_argument('--workers', type=int, help='worker processes (default 1)')
    parser.add_argument('--shard', help="process slice i of n of the manifest, as 'i/n' (0-based)")
    parser.add_argument(
        '--strict',
        action='store_true',
        default=None,
        help='failures.max_fraction=0 (the default): exit 1 if any volume failed',
    )
    parser.add_argument('--limit', type=int, help='only the first N volumes of the manifest')
    parser.add_argument(
        '--radchest-spacing', type=float, help='override the .npz spacing (mm, isotropic)'
    )
    parser.add_argument(
        '--keep-parts', action='store_true', default=None, help='keep per-volume part files'
    )
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument(
        '--list-recipes', action='store_true', help='print the named recipes and exit'
    )
    sub = parser.add_subparsers(dest='action', metavar='ACTION')
    merge = sub.add_parser('merge', help='expose shard caches as one cache (no copying)')
    merge.add_argument('--out', dest='merge_out', required=True, help='merged cache file to write')
    merge.add_argument('shards', nargs='*', help='shard caches (default: <out>.shard*-of-*.h5)')
    verify = sub.add_parser('verify', help='check every volume of a cache against its checksum')
    verify.add_argument('cache', help='cache file (.h5), single or merged')
    verify.add_argument('--no-progress', dest='verify_no_progress', action='store_true')


def _defaults() -> dict:
    from ctclip.config import load_config

    return load_config('preprocess/default')


def _merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from preprocessing.cache import merge_caches
    from preprocessing.runner import check_output, find_shards

    out = Path(args.merge_out)
    try:
        check_output(out)
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    shards = [Path(s) for s in args.shards] or find_shards(out)
    if not shards:
        print(
            f'no shard files given and none match {out.stem}.shard*-of-*{out.suffix}',
            file=sys.stderr,
        )
        return 2
    merge_caches(out, shards)
    print(f'merged {len(shards)} shards into {out}')
    return 0


def _verify(args: argparse.Namespace) -> int:
    """One line per bad volume, naming it; exit 1 if any (or the file itself) is bad."""
    from preprocessing.cache import open_cache, verify_cache

    try:
        count = len(open_cache(args.cache))
        bad = verify_cache(args.cache, progress=not (args.verify_no_progress or args.no_progress))
    except (ValueError, FileNotFoundError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    for volume_id, reason in bad:
        print(f'{args.cache}: volume {volume_id!r}: {reason}', file=sys.stderr)
    print(f'{args.cache}: {count - len(bad)} of {count} volumes verified, {len(bad)} bad')
    return 1 if bad else 0


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.list_recipes:
        from preprocessing.recipes import RECIPES

        for name, recipe in RECIPES.items():
            print(f'{name:8s} {recipe.description}')
        return 0
    if args.action == 'merge':
        return _merge(args)
    if args.action == 'verify':
        return _verify(args)
    from ctclip.config import resolve
    from preprocessing import run as run_preprocess

    flags = {
        'input': args.input,
        'out': args.out,
        'recipe': args.recipe,
        'metadata': args.metadata,
        'prefer_version': args.prefer_version,
        'workers': args.workers,
        'shard': args.shard,
        'failures.max_fraction': 0.0 if args.strict else None,
        'limit': args.limit,
        'radchest_spacing': args.radchest_spacing,
        'keep_parts': args.keep_parts,
        'progress': False if args.no_progress else None,
    }
    cfg = resolve(_defaults(), args.config, flags, overrides)
    try:
        summary = run_preprocess(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:  # a dead worker, a full disk: the run is resumable
        print(f'error: {exc}', file=sys.stderr)
        return 1
    counts = {k: getattr(summary, k) for k in ('total', 'ok', 'skipped', 'failed', 'seconds')}
    print(f'{summary.out}: {json.dumps(counts)}')
    for failure in summary.failures[:20]:
        print(
            f'  failed {failure["volume_id"]} [{failure["stage"]}] {failure["reason"]}',
            file=sys.stderr,
        )
    if summary.error:
        print(f'error: {summary.error}', file=sys.stderr)
    if summary.failed and summary.reports.get('failures_csv'):
        print(f'failures report: {summary.reports["failures_csv"]}', file=sys.stderr)
    return summary.exit_code
