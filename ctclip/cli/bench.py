"""`ctclip bench {ct-rate,rad-chestct,score,retrieval,grounding,grounding-score}`: benchmarks."""

from __future__ import annotations

import argparse
import sys

HELP = 'zero-shot and retrieval benchmarks (CT-RATE, RAD-ChestCT, or any scores/embeddings)'
DESCRIPTION = """Benchmarks under the published protocols, with bootstrap CIs, report.md/.html and PNGs.

  ctclip bench ct-rate --model DIR --data cache.h5 --labels valid_predicted_labels.csv --out DIR
  ctclip bench rad-chestct --model DIR --data cache.h5 --labels imgtest.csv --mapping ctclip16 --out DIR
  ctclip bench score --scores scores.csv --labels labels.csv --out DIR
  ctclip bench retrieval --image-emb img.npy --text-emb txt.npy --labels labels.csv --out DIR
  ctclip bench grounding --model DIR --data cache.h5 --dataset dataset.json --masks DIR --out DIR
  ctclip bench grounding-score --pred DIR --dataset dataset.json --masks DIR --out DIR

Settings: --config FILE.yaml or a packaged name (bench/ctrate, bench/radchestct-hlip; `ctclip
configs list bench`), then flags, then dotted overrides such as
bootstrap.n_draws=200 or retrieval.reference=true."""

_MAPPINGS = ('ctclip16', 'hlip', 'hlip14')


def _common(p: argparse.ArgumentParser, model: bool = False) -> None:
    p.add_argument(
        '--config',
        default=argparse.SUPPRESS,
        help='YAML file or packaged name (ctclip configs list bench)',
    )
    p.add_argument('--out', help='output folder for metrics.json, report.md/.html and PNGs')
    p.add_argument('--n-bootstrap', type=int, dest='n_draws', help='bootstrap draws (default 1000)')
    p.add_argument('--seed', type=int, help='bootstrap seed (default 0)')
    p.add_argument(
        '--no-plots', action='store_const', const=False, dest='plots', help='skip the PNGs'
    )
    if model:
        p.add_argument('--model', help='exported model folder (save_pretrained)')
        p.add_argument(
            '--templates',
            nargs='+',
            help='prompt templates: names (ctclip, there-is, plain); several = ensemble',
        )
        p.add_argument('--limit', type=int, help='only the first N labelled volumes (smoke runs)')
        p.add_argument('--batch-size', type=int, help='volumes per forward pass')
        p.add_argument('--device', help='auto (default: cuda when available), cpu, cuda, cuda:1')


def _scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('--unit', choices=('volume', 'scan'), help='score each volume or each scan')
    p.add_argument(
        '--scan-aggregate', choices=('mean', 'max'), help="combine a scan's reconstructions"
    )
    p.add_argument(
        '--uncertain', choices=('exclude', 'negative', 'positive'), help='how labels of -1 count'
    )
    p.add_argument(
        '--allow-missing',
        action='store_const',
        const=True,
        help='score only volumes that have scores',
    )


def _retrieval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        '--reference',
        action='store_const',
        const=True,
        help="reproduce CT-CLIP's retrieval scripts, quirks included",
    )
    p.add_argument(
        '--exclude', choices=('self', 'scan', 'none'), help='candidates removed from a volume query'
    )
    p.add_argument(
        '--negative-queries', choices=('skip', 'zero'), help='all-negative volume queries'
    )
    p.add_argument(
        '--cumulative-k',
        action='store_const',
        const=True,
        help='running mean across K (reference quirk)',
    )
    p.add_argument('--ties', choices=('pessimistic', 'index'), help='how equal similarities rank')
    p.add_argument(
        '--report-match',
        choices=('volume', 'scan'),
        help="a report's hit: its volume, or any volume of its scan",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='task', metavar='TASK')
    sub.required = True
    p = sub.add_parser('ct-rate', help='a model on CT-RATE: 18-class zero-shot + retrieval')
    _common(p, model=True)
    p.add_argument('--data', help='CT-RATE root or a preprocessed cache (.h5)')
    p.add_argument('--cache', help='the cache, when --data is a CT-RATE root')
    p.add_argument('--labels', help='labels CSV (default: the root’s valid_predicted_labels.csv)')
    p.add_argument('--reports', help='reports CSV for report->volume retrieval')
    p.add_argument('--split', choices=('valid', 'train'), help='CT-RATE split (default valid)')
    p.add_argument('--no-retrieval', action='store_const', const=False, dest='retrieval_enabled')
    _scoring_flags(p)
    _retrieval_flags(p)
    p = sub.add_parser('rad-chestct', help='a model on RAD-ChestCT under a class mapping')
    _common(p, model=True)
    p.add_argument('--data', help='preprocessed RAD-ChestCT cache (.h5)')
    p.add_argument('--labels', help='imgtest.csv (84 raw classes) or a mapped CSV (HLIP *_16.csv)')
    p.add_argument('--mapping', choices=_MAPPINGS, help='class mapping (default ctclip16)')
    _scoring_flags(p)
    p = sub.add_parser('score', help="score any model's per-volume scores CSV against a labels CSV")
    _common(p)
    p.add_argument('--scores', help='CSV: id column, then one column per class')
    p.add_argument('--labels', help='CSV in CT-RATE layout (or raw RAD-ChestCT with --mapping)')
    p.add_argument('--mapping', choices=_MAPPINGS, help='RAD-ChestCT mapping for raw RAD labels')
    p.add_argument(
        '--benchmark',
        choices=('ct-rate', 'rad-chestct'),
        help='put the numbers next to the published ones',
    )
    _scoring_flags(p)
    p = sub.add_parser('retrieval', help='score image/text embeddings: Recall@K and MAP@K')
    _common(p)
    p.add_argument('--image-emb', help='image embeddings .npy/.npz (N, E), rows = volumes')
    p.add_argument('--text-emb', help='report embeddings .npy/.npz (N, E), same row order')
    p.add_argument(
        '--labels', help='labels CSV (for MAP@K; also the row order when --ids is absent)'
    )
    p.add_argument('--ids', help='text file with one volume id per embedding row')
    p.add_argument(
        '--unit',
        choices=('volume', 'scan'),
        dest='retrieval_unit',
        help='retrieve volumes or scans',
    )
    _retrieval_flags(p)
    _grounding_parsers(sub)


def _grounding_parsers(sub) -> None:
    """3D phrase grounding (ReXGroundingCT layout); settings: benchmarks.grounding.runner."""
    p = sub.add_parser('grounding-score', help='score predicted finding masks (ReXGroundingCT)')
    p.add_argument('--config', default=argparse.SUPPRESS, help='YAML config of grounding settings')
    p.add_argument('--pred', required=True, help='folder of predicted masks, laid out like --masks')
    _grounding_common(p)
    p = sub.add_parser('grounding', help="a model's phrase heat maps scored on grounding masks")
    p.add_argument('--config', default=argparse.SUPPRESS, help='YAML config of grounding settings')
    p.add_argument('--model', required=True, help='exported model folder (save_pretrained)')
    p.add_argument('--data', required=True, help='preprocessed cache (.h5) holding the volumes')
    p.add_argument(
        '--prior-from',
        help='TRAINING dataset JSON for the location-prior baseline; its masks are in '
        '--prior-masks (default: --masks)',
    )
    p.add_argument('--prior-masks', help='mask folder of --prior-from')
    _grounding_common(p)


def _grounding_common(p: argparse.ArgumentParser) -> None:
    p.add_argument('--dataset', required=True, help='dataset.json (ReXGroundingCT layout)')
    p.add_argument('--masks', required=True, help='folder of gold masks, one file per volume name')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--images', help='folder of the CT files (same names) for the overlays')
    p.add_argument('--split', nargs='+', dest='splits', help='only these splits of the dataset')
    p.add_argument('--n-bootstrap', type=int, dest='n_draws', help='bootstrap draws (default 1000)')
    p.add_argument('--seed', type=int, help='bootstrap seed (default 0)')


# flag dest -> dotted config key (flags not listed map to their own name)
_KEYS = {
    'n_draws': 'bootstrap.n_draws',
    'seed': 'bootstrap.seed',
    'templates': 'zero_shot.templates',
    'batch_size': 'embed.batch_size',
    'unit': 'scoring.unit',
    'scan_aggregate': 'scoring.scan_aggregate',
    'uncertain': 'scoring.uncertain',
    'retrieval_enabled': 'retrieval.enabled',
    'retrieval_unit': 'retrieval.unit',
    'reference': 'retrieval.reference',
    'exclude': 'retrieval.exclude',
    'negative_queries': 'retrieval.negative_queries',
    'cumulative_k': 'retrieval.cumulative_k',
    'ties': 'retrieval.ties',
    'report_match': 'retrieval.report_match',
}
_NOT_SETTINGS = {'verb', 'task', 'config', 'verbose'}


def _print_summary(metrics: dict) -> None:
    from benchmarks.report import fmt

    for name, entry in metrics.get('headline', {}).items():
        print(f'{name:>40}: {fmt(entry)}')
    for note in metrics.get('notes', []):
        print(f'note: {note}')


def _run_grounding(args: argparse.Namespace, overrides: list[str]) -> int:
    from dataclasses import asdict

    from benchmarks.grounding import runner as grounding
    from ctclip.config import resolve

    flags = {
        'bootstrap.n_draws': args.n_draws,
        'bootstrap.seed': args.seed,
        'splits': args.splits,
    }
    cfg = resolve(
        asdict(grounding.GroundingSettings()), getattr(args, 'config', None), flags, overrides
    )
    try:
        settings = grounding.settings_from(cfg)
        if args.task == 'grounding-score':
            result = grounding.score_predictions(
                args.pred, args.dataset, args.masks, args.out, args.images, settings
            )
        else:
            result = grounding.run_model(
                args.model,
                args.data,
                args.dataset,
                args.masks,
                args.out,
                prior_from=args.prior_from,
                prior_masks=args.prior_masks,
                images_dir=args.images,
                settings=settings,
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f'ctclip bench {args.task}: {err}', file=sys.stderr)
        return 2
    from benchmarks.report import fmt

    arms = {'model': result['model'], **result.get('baselines', {})}
    for name, arm in arms.items():
        for metric, entry in arm['metrics'].items():
            print(f'{name:>15} {metric:>20}: {fmt(entry)}')
    for failure in result['failures']:
        print(f'failed: {failure["name"]}: {failure["reason"]}', file=sys.stderr)
    print(f'report: {args.out}/report.md')
    return 1 if result['failures'] else 0


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.task in ('grounding', 'grounding-score'):
        return _run_grounding(args, overrides)
    from benchmarks import runner
    from ctclip.config import resolve
    from preprocessing.errors import CacheCorruptError

    flags = {_KEYS.get(k, k): v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    cfg = resolve(runner.DEFAULTS, getattr(args, 'config', None), flags, overrides)
    task = {
        'ct-rate': runner.run_ctrate,
        'rad-chestct': runner.run_radchestct,
        'score': runner.score_files,
        'retrieval': runner.retrieval_files,
    }[args.task]
    try:
        metrics = task(cfg)
    except CacheCorruptError:  # damaged data, not a bad setting: main() names it, exit 1
        raise
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f'ctclip bench {args.task}: {err}', file=sys.stderr)
        return 2
    _print_summary(metrics)
    print(f'report: {cfg["out"]}/report.md')
    return 0
