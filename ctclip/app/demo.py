"""`ctclip demo`: synthetic cohort -> cache -> labels -> stage 1 -> stage 2 -> benchmarks -> report.

Every stage runs through its public command-line verb, so the demo is also the end-to-end test of
what a user types. Pointed at real data (`data=`) and a real LLM (`labeler.backend=openai`), the
same pipeline is a user's first real run.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from ctclip.app.pipeline import Pipeline, Stage
from ctclip.config import configs_dir, load_config

_logger = logging.getLogger(__name__)

DEFAULTS: dict = {
    'out': 'demo_out',
    'layout': 'both',  # ct-rate | rad-chestct | both
    'data': None,  # a CT-RATE-layout root to use instead of the synthetic cohort
    'seed': 0,
    'n': 200,  # synthetic CT-RATE scans (reports)
    'n_rad': 80,  # synthetic RAD-ChestCT volumes (external test set, never trained on)
    'recipe': 'small',
    'workers': 2,
    'labeler': {'backend': 'rules', 'model': None, 'base_url': None, 'concurrency': 8},
    'train': {
        'stage1': 'train/stage1-small.yaml',
        'stage2': 'train/stage2-evidence-small.yaml',
        'stage1_overrides': [],
        'stage2_overrides': [],
    },
    'bench': {'bootstrap': 1000, 'rad_mapping': 'hlip', 'seed': 0},
    'quick': False,
}

# --quick: the smallest run that still shows every artefact and learns measurably (CI's
# end-to-end test, about 2.5 min on 2 cores). At 48 scans and 24 RAD volumes the RAD-layout AUROC
# was 0.570 [0.471, 0.653]: too few held-out positives to tell a model from chance.
QUICK: dict = {
    'n': 80,
    'n_rad': 48,
    'bench': {'bootstrap': 200},
}

VALID_LAYOUTS = ('ct-rate', 'rad-chestct', 'both')


def _cli(argv: list[str], stage: str) -> None:
    """Run one `ctclip` verb in-process; a non-zero exit stops the demo naming the stage."""
    from ctclip.cli import main

    _logger.debug('ctclip %s', ' '.join(argv))
    code = main(argv)
    if code:
        raise RuntimeError(f"Demo stage '{stage}' failed: `ctclip {' '.join(argv)}` exited {code}")


def concat_csv(sources: list[Path], target: Path) -> Path:
    """Join CSVs with the same header (CT-RATE ships train and validation tables separately)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix('.tmp')
    header: list[str] | None = None
    with tmp.open('w', newline='', encoding='utf-8') as out:
        writer = None
        for src in sources:
            with src.open(newline='', encoding='utf-8') as f:
                reader = csv.reader(f)
                head = next(reader)
                if header is None:
                    header, writer = head, csv.writer(out)
                    writer.writerow(head)
                elif head != header:
                    raise ValueError(f'{src} has columns {head}, not {header} like {sources[0]}')
                writer.writerows(reader)
    tmp.replace(target)
    return target


class Demo:
    """Builds the stage list from the resolved settings and the output folder layout."""

    def __init__(self, cfg: dict):
        if cfg['layout'] not in VALID_LAYOUTS:
            raise ValueError(f'layout must be one of {VALID_LAYOUTS}, not {cfg["layout"]!r}')
        self.cfg = cfg
        self.out = Path(cfg['out']).resolve()
        self.ctrate_root = Path(cfg['data']).resolve() if cfg['data'] else self.out / 'cohort'
        self.rad_root = self.out / 'cohort-rad'
        self.paths = {
            'ctrate_cache': self.out / 'cache' / 'ctrate.h5',
            'rad_cache': self.out / 'cache' / 'radchestct.h5',
            'labels': self.out / 'labels',
            'stage1': self.out / 'train' / 'stage1',
            'stage2': self.out / 'train' / 'stage2',
            'bench_ctrate': self.out / 'bench' / 'ct-rate',
            'bench_rad': self.out / 'bench' / 'rad-chestct',
        }

    # -- dataset paths of a CT-RATE-layout root ---------------------------------------------------
    def ctrate(self, *parts: str) -> Path:
        return self.ctrate_root / 'dataset' / Path(*parts)

    @property
    def wants_rad(self) -> bool:
        return self.cfg['layout'] in ('rad-chestct', 'both')

    # -- stages ------------------------------------------------------------------------------------
    def synth(self, s: dict) -> dict:
        summary: dict = {}
        if not self.cfg['data']:
            _cli(
                [
                    'synth',
                    '--out',
                    str(self.ctrate_root),
                    '--n',
                    str(s['n']),
                    '--seed',
                    str(s['seed']),
                    '--layout',
                    'ct-rate',
                    '--small',
                    '--workers',
                    str(self.cfg['workers']),
                ],
                'synth',
            )
            summary['ctrate_root'] = str(self.ctrate_root)
        if self.wants_rad:
            _cli(
                [
                    'synth',
                    '--out',
                    str(self.rad_root),
                    '--n',
                    str(s['n_rad']),
                    '--seed',
                    str(s['seed'] + 1),
                    '--layout',
                    'rad-chestct',
                    '--small',
                    '--workers',
                    str(self.cfg['workers']),
                ],
                'synth',
            )
            summary['rad_root'] = str(self.rad_root)
        return summary

    def preprocess(self, s: dict) -> dict:
        _cli(
            [
                'preprocess',
                '--input',
                str(self.ctrate_root),
                '--out',
                str(self.paths['ctrate_cache']),
                '--recipe',
                s['recipe'],
                '--workers',
                str(s['workers']),
            ],
            'preprocess',
        )
        if self.wants_rad:
            _cli(
                [
                    'preprocess',
                    '--input',
                    str(self.rad_root / 'radchestct'),
                    '--out',
                    str(self.paths['rad_cache']),
                    '--recipe',
                    s['recipe'],
                    '--workers',
                    str(s['workers']),
                ],
                'preprocess',
            )
        return {k: str(v) for k, v in self.paths.items() if k.endswith('cache')}

    def label(self, s: dict) -> dict:
        out = self.paths['labels']
        reports = concat_csv(
            [
                self.ctrate('radiology_text_reports', f'{x}_reports.csv')
                for x in ('train', 'validation')
            ],
            out / 'reports.csv',
        )
        argv = [
            'label',
            '--reports',
            str(reports),
            '--out-dir',
            str(out),
            '--backend',
            s['labeler']['backend'],
            '--concurrency',
            str(s['labeler']['concurrency']),
        ]
        for flag in ('model', 'base_url'):
            if s['labeler'].get(flag):
                argv += [f'--{flag.replace("_", "-")}', str(s['labeler'][flag])]
        _cli(argv, 'label')
        gold_files = [
            self.ctrate('multi_abnormality_labels', f'{x}_predicted_labels.csv')
            for x in ('train', 'valid')
        ]
        if all(p.exists() for p in gold_files):
            gold = concat_csv(gold_files, out / 'gold_labels.csv')
            _cli(
                [
                    'label',
                    'eval',
                    '--pred',
                    str(out / 'labels.csv'),
                    '--gold',
                    str(gold),
                    '--out',
                    str(out / 'eval'),
                ],
                'label',
            )
        return {'labels': str(out / 'labels.csv'), 'evidence': str(out / 'evidence.jsonl')}

    def _train(self, s: dict, which: str, extra: list[str]) -> dict:
        out = self.paths[which]
        labels = self.paths['labels']
        argv = [
            'train',
            '--config',
            str(configs_dir() / s['train'][which]),
            f'data.cache={self.paths["ctrate_cache"]}',
            f'data.labels={labels / "labels.csv"}',
            f'data.reports={labels / "reports.csv"}',
            f'data.evidence={labels / "evidence.jsonl"}',
            f'train.output_dir={out}',
            f'train.seed={s["seed"]}',
            *extra,
            *s['train'][f'{which}_overrides'],
        ]
        _cli(argv, f'train {which}')
        return {'model': str(out / 'final'), 'output_dir': str(out)}

    def train_stage1(self, s: dict) -> dict:
        return self._train(s, 'stage1', [])

    def train_stage2(self, s: dict) -> dict:
        return self._train(s, 'stage2', [f'train.init_from={self.paths["stage1"] / "final"}'])

    def bench_ctrate(self, s: dict) -> dict:
        gold = self.ctrate('multi_abnormality_labels', 'valid_predicted_labels.csv')
        _cli(
            [
                'bench',
                'ct-rate',
                '--model',
                str(self.paths['stage2'] / 'final'),
                '--data',
                str(self.paths['ctrate_cache']),
                '--labels',
                str(gold),
                '--reports',
                str(self.ctrate('radiology_text_reports', 'validation_reports.csv')),
                '--out',
                str(self.paths['bench_ctrate']),
                f'bootstrap.n_draws={s["bench"]["bootstrap"]}',
                f'bootstrap.seed={s["bench"]["seed"]}',
            ],
            'bench ct-rate',
        )
        return {'out': str(self.paths['bench_ctrate'])}

    def bench_rad(self, s: dict) -> dict:
        rad = self.rad_root / 'radchestct'
        labels = concat_csv(
            [rad / f'img{x}.csv' for x in ('train', 'valid', 'test')],
            self.paths['bench_rad'] / 'labels_all.csv',
        )
        _cli(
            [
                'bench',
                'rad-chestct',
                '--model',
                str(self.paths['stage2'] / 'final'),
                '--data',
                str(self.paths['rad_cache']),
                '--labels',
                str(labels),
                '--mapping',
                s['bench']['rad_mapping'],
                '--out',
                str(self.paths['bench_rad']),
                f'bootstrap.n_draws={s["bench"]["bootstrap"]}',
                f'bootstrap.seed={s["bench"]["seed"]}',
            ],
            'bench rad-chestct',
        )
        return {'out': str(self.paths['bench_rad'])}

    def report(self, s: dict) -> dict:
        from ctclip.app.report import write_demo_report

        return write_demo_report(self)

    def stages(self) -> list[Stage]:
        c = self.cfg
        base = {'seed': c['seed'], 'recipe': c['recipe']}
        data = {**base, 'n': c['n'], 'n_rad': c['n_rad'], 'data': c['data'], 'layout': c['layout']}
        # the resolved YAML, not only its path: an edited config must retrain, not resume
        train_configs = {
            k: load_config(configs_dir() / c['train'][k]) for k in ('stage1', 'stage2')
        }
        stages = [
            Stage('synth', 'synthetic cohort', self.synth, data),
            Stage(
                'preprocess',
                'preprocess to HDF5',
                self.preprocess,
                {**data, 'workers': c['workers']},
            ),
            Stage('label', 'label reports', self.label, {**data, 'labeler': c['labeler']}),
            Stage(
                'stage1',
                'train stage 1 (supervised)',
                self.train_stage1,
                {**data, 'labeler': c['labeler'], 'train': c['train'], 'configs': train_configs},
                (self.paths['stage1'],),
            ),
            Stage(
                'stage2',
                'train stage 2 (evidence-aligned CLIP)',
                self.train_stage2,
                {**data, 'labeler': c['labeler'], 'train': c['train'], 'configs': train_configs},
                (self.paths['stage2'],),
            ),
            Stage(
                'bench_ctrate',
                'benchmark CT-RATE layout',
                self.bench_ctrate,
                {**data, 'train': c['train'], 'bench': c['bench']},
                (self.paths['bench_ctrate'],),
            ),
        ]
        if self.wants_rad:
            stages.append(
                Stage(
                    'bench_rad',
                    'benchmark RAD-ChestCT layout',
                    self.bench_rad,
                    {**data, 'train': c['train'], 'bench': c['bench']},
                    (self.paths['bench_rad'],),
                )
            )
        # The report is cheap and always rewritten, so it reflects whatever ran before.
        stages.append(Stage('report', 'write report', self.report, {'t': time.time()}))
        return stages


def run_demo(cfg: dict, force: tuple[str, ...] = (), progress: bool = True) -> dict:
    """Run (or resume) the demo and return the headline numbers."""
    demo = Demo(cfg)
    demo.out.mkdir(parents=True, exist_ok=True)
    results = Pipeline(demo.out, demo.stages(), progress=progress).run(force=force)
    return results['report']
