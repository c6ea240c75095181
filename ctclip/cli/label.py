"""`ctclip label`: silver labels and evidence from reports; `ctclip label eval`: score label files."""

from __future__ import annotations

import argparse
import json
import logging
import sys

HELP = 'label reports (rules or any LLM) and evaluate label files'
DESCRIPTION = """\
Label radiology reports with the 18 CT-RATE findings and their evidence.

  ctclip label --reports validation_reports.csv --out-dir labels/            (rules, offline)
  ctclip label --reports r.csv --out-dir out --backend openai --model gpt-4o-mini
  ctclip label --reports r.csv --out-dir out --backend openai --base-url http://127.0.0.1:8000/v1 \\
      --model local --concurrency 32 price.input_per_mtok=0.15 price.output_per_mtok=0.6
  ctclip label eval --pred out/labels.csv --gold manual.csv --out eval/
  ctclip label eval --pred rules/labels.csv llm/labels.csv --gold manual.csv --out compare/

The API key is read from $OPENAI_API_KEY (or the variable named by api_key_env=...) only.
Outputs: labels.csv, evidence.jsonl, labels.meta.json, failures.csv, response_cache.sqlite.
Settings: --config FILE.yaml or a packaged name (label/rules, label/openai; `ctclip configs list
label`) and dotted overrides such as retry.max_retries=6.
Exit status 1 when more reports failed than failures.max_fraction allows (default 0: any)."""

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        'action', nargs='?', choices=('run', 'eval'), default='run', help='run (default) or eval'
    )
    run = parser.add_argument_group('labeling')
    run.add_argument('--reports', help='reports CSV (CT-RATE or any) or JSONL')
    run.add_argument('--out-dir', help='output folder')
    run.add_argument('--backend', choices=('rules', 'openai', 'llamacpp'), help='default: rules')
    run.add_argument('--model', help='model name (openai) or GGUF path (llamacpp)')
    run.add_argument('--base-url', help='OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1')
    run.add_argument('--id-column', help='id column or JSON key (default: guessed)')
    run.add_argument('--text-columns', help='comma-separated text columns (default: guessed)')
    run.add_argument('--concurrency', type=int, help='requests in flight (default 8)')
    run.add_argument('--prompt', choices=('evidence', 'li'), help="'li': one line of 18 values")
    run.add_argument('--mode', help='instructor mode: tools (default), json_schema, json, md_json')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    ev = parser.add_argument_group('eval')
    ev.add_argument('--pred', nargs='+', help='label file(s) to score; two or more are compared')
    ev.add_argument('--gold', help='manual labels CSV (first column id, then FINDINGS columns)')
    ev.add_argument('--out', help='eval output folder')
    ev.add_argument('--names', help='comma-separated display names for --pred files')
    ev.add_argument(
        '--uncertain',
        choices=('positive', 'negative'),
        default='positive',
        help='how -1 (uncertain) predictions count (default positive)',
    )


def _run_label(args: argparse.Namespace, overrides: list[str]) -> int:
    from ctclip.config import resolve
    from llm_labeling.backends import FatalBackendError
    from llm_labeling.runner import label_reports
    from llm_labeling.settings import failure_budget_exceeded

    flags = {
        'reports': args.reports,
        'out_dir': args.out_dir,
        'backend': args.backend,
        'model': args.model,
        'base_url': args.base_url,
        'input.id_column': args.id_column,
        'input.text_columns': args.text_columns,
        'concurrency': args.concurrency,
        'prompt': args.prompt,
        'mode': args.mode,
        'progress': False if args.no_progress else None,
    }
    cfg = resolve({}, args.config, flags, overrides)
    try:
        out = label_reports(cfg)
    except (ValueError, FileNotFoundError, FatalBackendError) as e:
        raise SystemExit(f'ctclip label: {e}') from None
    meta = json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))
    counts = meta['counts']
    print(
        f'{counts["reports"]} reports ({counts["unique_texts"]} distinct texts, '
        f'{counts["cache_hits"]} from cache), {counts["failed_reports"]} failed; '
        f'{meta["tokens"]["prompt"] + meta["tokens"]["completion"]} tokens, '
        f'${meta["cost_usd"]:.4f}'
    )
    print(f'wrote {out}/labels.csv, evidence.jsonl, labels.meta.json, failures.csv')
    failed, total = counts['failed_reports'], counts['reports']
    if not failed:
        return 0
    budget = meta['settings']['failures']['max_fraction']
    within = not failure_budget_exceeded(meta['settings'], failed, total)
    print(
        f'ctclip label: {failed} of {total} report(s) failed '
        f'({"within" if within else "over"} the budget failures.max_fraction={budget}): '
        f'see {out}/failures.csv; rerun to retry them',
        file=sys.stderr,
    )
    return 0 if within else 1


def _run_eval(args: argparse.Namespace) -> int:
    from llm_labeling.evaluate import evaluate_labels

    if not (args.pred and args.gold and args.out):
        raise SystemExit('ctclip label eval needs --pred, --gold and --out')
    names = args.names.split(',') if args.names else None
    try:
        result = evaluate_labels(args.pred, args.gold, args.out, names, args.uncertain)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'ctclip label eval: {e}') from None
    for name, res in result['results'].items():
        print(f'{name}: macro F1 {res["macro"]["f1"]:.4f}, weighted F1 {res["weighted"]["f1"]:.4f}')
    print(f'wrote {args.out}/metrics.json, report.md, f1_per_class.png')
    return 0


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.action == 'eval':
        return _run_eval(args)
    return _run_label(args, overrides)
