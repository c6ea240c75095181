"""`ctclip demo`: the whole system end to end on the embedded synthetic cohort (or your data)."""

from __future__ import annotations

import argparse
import copy

HELP = 'run the whole pipeline end to end (synth, preprocess, label, train, bench, report)'
DESCRIPTION = """\
Run every stage on the embedded synthetic chest-CT cohort, with no GPU, data or LLM server:
synthetic cohort -> HDF5 cache -> rules labels + evidence -> stage 1 (supervised) -> stage 2
(evidence-aligned CLIP) -> CT-RATE and RAD-ChestCT benchmarks -> DIR/report.html.

Rerunning resumes: finished stages are skipped. Point it at real data with --data (a CT-RATE-layout
root) and at an LLM with --labeler openai --base-url URL.

  ctclip demo --out demo_out
  ctclip demo --out demo_out --quick                # the smallest run (CI)
  ctclip demo --out abl --ablation --seeds 3        # the seed papers' claims, mean +- std
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', help='output folder (default demo_out)')
    parser.add_argument(
        '--layout',
        choices=['ct-rate', 'rad-chestct', 'both'],
        help='which benchmark layouts to build and score (default both)',
    )
    parser.add_argument(
        '--labeler',
        choices=['rules', 'openai', 'llamacpp'],
        help='labeling backend (default rules, the embedded offline labeler)',
    )
    parser.add_argument('--base-url', help='OpenAI-compatible endpoint for --labeler openai')
    parser.add_argument('--model', help='LLM model name (openai) or GGUF path (llamacpp)')
    parser.add_argument(
        '--data', help='a CT-RATE-layout root to use instead of the synthetic cohort'
    )
    parser.add_argument('--n', type=int, help='synthetic scans (default 200)')
    parser.add_argument('--seed', type=int, help='seed of the cohort and of training (default 0)')
    parser.add_argument('--quick', action='store_true', help='fewest studies and steps (CI)')
    parser.add_argument(
        '--force',
        nargs='*',
        default=(),
        metavar='STAGE',
        help='rerun these stages even if done (synth, preprocess, label, stage1, ...)',
    )
    parser.add_argument(
        '--ablation',
        action='store_true',
        help="reproduce the seed papers' claims as an ablation table instead",
    )
    parser.add_argument('--seeds', type=int, help='seeds per ablation arm (default 3)')


def resolve_demo_config(args: argparse.Namespace, overrides: list[str]) -> dict:
    from ctclip.app.demo import DEFAULTS, QUICK
    from ctclip.config import merge, resolve

    defaults = copy.deepcopy(DEFAULTS)
    if args.quick:
        defaults = merge(defaults, QUICK)
        defaults['quick'] = True
    flags = {
        'out': args.out,
        'layout': args.layout,
        'labeler.backend': args.labeler,
        'labeler.base_url': args.base_url,
        'labeler.model': args.model,
        'data': args.data,
        'n': args.n,
        'seed': args.seed,
    }
    return resolve(defaults, args.config, flags, overrides)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = resolve_demo_config(args, overrides)
    if args.ablation:
        from ctclip.app.ablation import run_ablation

        summary = run_ablation(cfg, seeds=args.seeds or 3)
        print(f'\nAblation table: {summary["table"]}')
        return 0
    from ctclip.app.demo import run_demo

    headline = run_demo(cfg, force=tuple(args.force))
    print(f'\nReport: {headline["report_html"]}')
    for name, value in headline['headline'].items():
        print(f'  {name}: {value}')
    return 0
