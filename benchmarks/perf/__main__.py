"""`python -m benchmarks.perf [--only AREA ...] [--quick] [--results FILE.md]`: the speed benchmarks.

The table is printed; it is written only where `--results` says (`make perf` passes
benchmarks/perf/RESULTS.md), never beside the installed package.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
import traceback
from pathlib import Path

from benchmarks.perf.common import Row, machine_description
from ctcommon.atomic import write_text

# area -> module with run(quick: bool) -> list[Row]
AREAS: dict[str, str] = {
    'preprocess': 'benchmarks.perf.bench_preprocess',
    'cache': 'benchmarks.perf.bench_cache',
    'label': 'benchmarks.perf.bench_label',
    'train': 'benchmarks.perf.bench_train',
    'scoring': 'benchmarks.perf.bench_scoring',
    'synth': 'benchmarks.perf.bench_synth',
    'models': 'benchmarks.perf.bench_models',
    'grounding': 'benchmarks.perf.bench_grounding',
    'gpu': 'benchmarks.perf.bench_gpu',
}
GPU_SECTION_MARK = '<!-- gpu -->'


def _fmt(value: float | None) -> str:
    if value is None:
        return '-'
    return f'{value:.3g}' if abs(value) < 1000 else f'{value:,.0f}'


def render(rows: list[Row]) -> str:
    lines = [
        '| area | what | ours | baseline | ratio | target | pass |',
        '|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        base = f'{_fmt(r.baseline)} {r.unit} ({r.baseline_name})' if r.baseline is not None else '-'
        ok = {True: 'yes', False: 'NO', None: '-'}[r.passed]
        lines.append(
            f'| {r.area} | {r.what} | {_fmt(r.ours)} {r.unit} | {base} | {_fmt(r.ratio)} '
            f'| {r.target} | {ok} |'
        )
    notes = [f'- {r.area} / {r.what}: {r.notes}' for r in rows if r.notes]
    return '\n'.join(lines + ([''] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.perf', description=__doc__)
    parser.add_argument('--only', nargs='*', choices=sorted(AREAS), help='run only these areas')
    parser.add_argument('--quick', action='store_true', help='smaller inputs, for a smoke run')
    parser.add_argument(
        '--results',
        '--out',
        type=Path,
        help='Markdown file to rewrite with the table (its GPU section is kept); default: print only',
    )
    parser.add_argument(
        '--ct-sample',
        type=Path,
        help='a real chest CT (.nii.gz) to resample as the preprocess/cache input '
        '(default: a synthetic phantom)',
    )
    parser.add_argument('--no-write', action='store_true', help='print only, even with --results')
    args = parser.parse_args(argv)
    if args.results is not None and args.quick and not args.no_write:
        parser.error('--results must not be combined with --quick (a smoke run is not a result)')
    if args.ct_sample is not None and not args.ct_sample.is_file():
        parser.error(f'--ct-sample must be an existing file, not {str(args.ct_sample)!r}')
    options = {'ct_sample': args.ct_sample}
    rows: list[Row] = []
    failed: list[str] = []
    started = time.time()
    for area in args.only or list(AREAS):
        print(f'== {area}', flush=True)
        try:
            module = importlib.import_module(AREAS[area])
            accepted = inspect.signature(module.run).parameters
            new = module.run(
                quick=args.quick, **{k: v for k, v in options.items() if k in accepted}
            )
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            failed.append(area)
            continue
        rows.extend(new)
        print(render(new), flush=True)
    table = render(rows)
    print('\n' + table)
    results = None if args.no_write else args.results
    if results is not None:
        gpu = ''
        if results.exists() and GPU_SECTION_MARK in results.read_text(encoding='utf-8'):
            gpu = results.read_text(encoding='utf-8').split(GPU_SECTION_MARK, 1)[1]
        text = (
            '# Performance results\n\n'
            'Rewritten by `python -m benchmarks.perf --results FILE` (`make perf`). Each row compares\n'
            'our code with a baseline measured in the same run on the same machine; `ratio` is\n'
            'oriented so that larger is better for us.\n\n'
            f'Machine: {machine_description()}  \n'
            f'Run: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))}, '
            f'{time.time() - started:.0f} s\n\n{table}\n'
            + (f'\nFailed areas: {", ".join(failed)}\n' if failed else '')
            + f'\n{GPU_SECTION_MARK}{gpu or chr(10) + "## GPU" + chr(10) + chr(10) + "Not measured yet." + chr(10)}'
        )
        write_text(results, text)
        print(f'wrote {results}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
