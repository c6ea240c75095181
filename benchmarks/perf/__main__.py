"""`python -m benchmarks.perf [--only AREA ...] [--quick]`: run the speed benchmarks and rewrite RESULTS.md."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from benchmarks.perf.common import Row, machine_description

# area -> module with run(quick: bool) -> list[Row]
AREAS: dict[str, str] = {
    'preprocess': 'benchmarks.perf.bench_preprocess',
    'cache': 'benchmarks.perf.bench_cache',
    'label': 'benchmarks.perf.bench_label',
    'train': 'benchmarks.perf.bench_train',
    'scoring': 'benchmarks.perf.bench_scoring',
    'synth': 'benchmarks.perf.bench_synth',
    'models': 'benchmarks.perf.bench_models',
    'gpu': 'benchmarks.perf.bench_gpu',
}
RESULTS = Path(__file__).with_name('RESULTS.md')
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
    parser.add_argument('--no-write', action='store_true', help='print only; keep RESULTS.md')
    args = parser.parse_args(argv)
    rows: list[Row] = []
    failed: list[str] = []
    started = time.time()
    for area in args.only or list(AREAS):
        print(f'== {area}', flush=True)
        try:
            module = importlib.import_module(AREAS[area])
            new = module.run(quick=args.quick)
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            failed.append(area)
            continue
        rows.extend(new)
        print(render(new), flush=True)
    table = render(rows)
    print('\n' + table)
    if not args.no_write and not args.quick:
        gpu = ''
        if RESULTS.exists() and GPU_SECTION_MARK in RESULTS.read_text(encoding='utf-8'):
            gpu = RESULTS.read_text(encoding='utf-8').split(GPU_SECTION_MARK, 1)[1]
        text = (
            '# Performance results\n\n'
            'Rewritten by `python -m benchmarks.perf` (or `make perf`). Each row compares our code\n'
            'with a baseline measured in the same run on the same machine; `ratio` is oriented so\n'
            'that larger is better for us.\n\n'
            f'Machine: {machine_description()}  \n'
            f'Run: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))}, '
            f'{time.time() - started:.0f} s\n\n{table}\n'
            + (f'\nFailed areas: {", ".join(failed)}\n' if failed else '')
            + f'\n{GPU_SECTION_MARK}{gpu or chr(10) + "## GPU" + chr(10) + chr(10) + "Not measured yet." + chr(10)}'
        )
        RESULTS.write_text(text, encoding='utf-8')
        print(f'wrote {RESULTS}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
