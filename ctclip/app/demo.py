"""`ctclip demo`: synthetic cohort -> cache -> labels -> stage 1 -> stage 2 -> benchmarks -> report.

Every stage runs through its public command-line verb, so the demo is also the end-to-end test of
what a user types. Pointed at real data (`data=`) and a real LLM (`labeler.backend=openai`), the
same pipeline is a user's first real run.
"""

from __future__ import annotations

import csv
import functools
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctclip.app.pipeline import Pipeline, Stage, cli_argv
from ctclip.config import load_config
from ctcommon.settings import check_keys

_logger = logging.getLogger(__name__)

DEFAULTS: dict = {
    'out': 'demo_out',
    'layout': 'both',  # ct-rate | rad-chestct | both
    'data': None,  # a CT-RATE-layout root to use instead of the synthetic cohort
    'seed': 0,
    'n': 200,  # synthetic CT-RATE scans (reports): train and validation patients
    # The test split of both layouts: extra patients (never trained on, never used to validate)
    # chosen so that every class has at least this many positive and negative volumes
    # (`synth.plan_test`); the zero-shot benchmarks and grounding score it. 0: no test split,
    # the benchmarks score the validation patients (and RAD-ChestCT its `n_rad` volumes).
    'test_min_count': 25,
    'n_rad': 0,  # RAD-ChestCT volumes beyond its test split (external too: all are scored)
    'recipe': 'small',
    'workers': 2,
    'labeler': {'backend': 'rules', 'model': None, 'base_url': None, 'concurrency': 8},
    'train': {
        'stage1': 'train/stage1-small',  # packaged config names, or YAML files
        'stage2': 'train/stage2-evidence-small',
        'stage1_overrides': [],
        'stage2_overrides': [],
    },
    'bench': {'bootstrap': 1000, 'rad_mapping': 'hlip', 'seed': 0},
    'quick': False,
}

# --quick: the smallest run that still shows every artefact and learns measurably (CI's
# end-to-end test, about 5.5 min on 2 cores). At 48 scans and 24 RAD volumes the RAD-layout AUROC
# was 0.570 [0.471, 0.653]: too few held-out positives to tell a model from chance. A test split
# of 12 positive and 12 negative volumes per class is about 35 volumes on each layout; on it, 80
# training scans gave CT-RATE 0.605 [0.508, 0.680] and 120 gave 0.693 [0.592, 0.764] (7 Dec).
QUICK: dict = {
    'n': 120,
    'test_min_count': 12,
    'bench': {'bootstrap': 200},
}

VALID_LAYOUTS = ('ct-rate', 'rad-chestct', 'both')


def check_settings(cfg: Mapping, defaults: Mapping = DEFAULTS, section: str = '') -> None:
    """A misspelt demo key (`labeler.bakend=openai`) fails before any stage runs, naming the
    closest valid key; the sections are those of `DEFAULTS`."""
    check_keys(cfg, defaults, section)
    for key, value in cfg.items():
        if isinstance(defaults.get(key), Mapping) and isinstance(value, Mapping):
            check_settings(value, defaults[key], f'{section}.{key}' if section else key)


def _cli(stage: str, *words: str, **options: Any) -> None:
    """Run one `ctclip` verb in-process (`cli_argv` builds the command line a user would type);
    a non-zero exit stops the demo naming the stage and the command."""
    from ctclip.cli import main

    argv = cli_argv(*words, **options)
    _logger.debug('ctclip %s', ' '.join(argv))
    code = main(argv)
    if code:
        raise RuntimeError(f"Demo stage '{stage}' failed: `ctclip {' '.join(argv)}` exited {code}")


def concat_csv(sources: list[Path], target: Path) -> Path:
    """Join CSVs with the same header (CT-RATE ships train and validation tables separately)."""
    from ctcommon.atomic import atomic_open

    target.parent.mkdir(parents=True, exist_ok=True)
    header: list[str] | None = None
    with atomic_open(target, 'w', newline='') as out:
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
    return target


class Demo:
    """Builds the stage list from the resolved settings and the output folder layout."""

    def __init__(self, cfg: dict):
        check_settings(cfg)
        if cfg['layout'] not in VALID_LAYOUTS:
            raise ValueError(f'layout must be one of {VALID_LAYOUTS}, not {cfg["layout"]!r}')
        for key in ('test_min_count', 'n_rad'):
            value = cfg.get(key, DEFAULTS[key])
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f'{key} must be an integer >= 0, not {value!r}')
        rad_volumes = cfg.get('n_rad', DEFAULTS['n_rad']) or cfg.get(
            'test_min_count', DEFAULTS['test_min_count']
        )
        if cfg['layout'] != 'ct-rate' and not rad_volumes:
            raise ValueError('n_rad must be > 0 when test_min_count is 0, not 0 (no RAD volume)')
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
            'grounding': self.out / 'grounding',
            'bench_grounding': self.out / 'bench' / 'grounding',
        }

    # -- dataset paths of a CT-RATE-layout root ---------------------------------------------------
    def ctrate(self, *parts: str) -> Path:
        return self.ctrate_root / 'dataset' / Path(*parts)

    @property
    def held_out(self) -> str:
        """The split the benchmarks score: the synthetic test split, or (a user's `data=` tree,
        or `test_min_count=0`) the validation patients."""
        test = self.cfg.get('test_min_count', DEFAULTS['test_min_count'])
        return 'test' if test and not self.cfg.get('data') else 'valid'

    def held_out_tables(self) -> tuple[Path, Path]:
        """(gold labels, reports) of the held-out split."""
        split = self.held_out
        long = {'valid': 'validation', 'test': 'test'}[split]
        return (
            self.ctrate('multi_abnormality_labels', f'{split}_predicted_labels.csv'),
            self.ctrate('radiology_text_reports', f'{long}_reports.csv'),
        )

    @property
    def wants_rad(self) -> bool:
        return self.cfg['layout'] in ('rad-chestct', 'both')

    # -- stages ------------------------------------------------------------------------------------
    def synth(self, s: dict) -> dict:
        runs = {}  # summary key -> the flags of one `ctclip synth`
        test = s['test_min_count'] or None  # the flag only when set: `ctclip synth` as before
        if not self.cfg['data']:
            runs['ctrate_root'] = dict(
                out=self.ctrate_root,
                n=s['n'],
                seed=s['seed'],
                layout='ct-rate',
                test_min_count=test,
            )
        if self.wants_rad:
            seed = s['seed'] + 1
            runs['rad_root'] = dict(
                out=self.rad_root,
                n=s['n_rad'],
                seed=seed,
                layout='rad-chestct',
                test_min_count=test,
            )
        for flags in runs.values():
            _cli('synth', 'synth', **flags, small=True, workers=self.cfg['workers'])
        return {key: str(flags['out']) for key, flags in runs.items()}

    def preprocess(self, s: dict) -> dict:
        inputs = {'ctrate_cache': self.ctrate_root}
        if self.wants_rad:
            inputs['rad_cache'] = self.rad_root / 'radchestct'
        for key, source in inputs.items():
            out, recipe, workers = self.paths[key], s['recipe'], s['workers']
            _cli('preprocess', 'preprocess', input=source, out=out, recipe=recipe, workers=workers)
        return {k: str(v) for k, v in self.paths.items() if k.endswith('cache')}

    def label(self, s: dict) -> dict:
        out, labeler = self.paths['labels'], s['labeler']
        splits = ('train', 'validation')
        texts = [self.ctrate('radiology_text_reports', f'{x}_reports.csv') for x in splits]
        reports = concat_csv(texts, out / 'reports.csv')
        flags = {'backend': labeler['backend'], 'concurrency': labeler['concurrency']}
        flags.update({k: labeler.get(k) or None for k in ('model', 'base_url')})  # only when set
        _cli('label', 'label', reports=reports, out_dir=out, **flags)
        gold_files = [
            self.ctrate('multi_abnormality_labels', f'{x}_predicted_labels.csv')
            for x in ('train', 'valid')
        ]
        if all(p.exists() for p in gold_files):
            gold = concat_csv(gold_files, out / 'gold_labels.csv')
            _cli('label', 'label', 'eval', pred=out / 'labels.csv', gold=gold, out=out / 'eval')
        return {'labels': str(out / 'labels.csv'), 'evidence': str(out / 'evidence.jsonl')}

    def train_overrides(self, output_dir: Path, seed: int) -> dict[str, Any]:
        """The dotted settings every training run of the demo (and the ablation) shares."""
        labels = self.paths['labels']
        return {
            'data.cache': self.paths['ctrate_cache'],
            'data.labels': labels / 'labels.csv',
            'data.reports': labels / 'reports.csv',
            'data.evidence': labels / 'evidence.jsonl',
            'train.output_dir': output_dir,
            'train.seed': seed,
        }

    def _train(self, s: dict, which: str, overrides: dict[str, Any]) -> dict:
        out = self.paths[which]
        overrides = {**self.train_overrides(out, s['seed']), **overrides}
        extra = s['train'][f'{which}_overrides']  # the user's own `key=value` tokens, last
        _cli(f'train {which}', 'train', config=s['train'][which], overrides=overrides, extra=extra)
        return {'model': str(out / 'final'), 'output_dir': str(out)}

    def train_stage1(self, s: dict) -> dict:
        return self._train(s, 'stage1', {})

    def train_stage2(self, s: dict) -> dict:
        return self._train(s, 'stage2', {'train.init_from': self.paths['stage1'] / 'final'})

    def _bench(self, stage: str, kind: str, s: dict, **flags: Any) -> dict:
        model, out = self.paths['stage2'] / 'final', self.paths[stage]
        draws = {'bootstrap.n_draws': s['bench']['bootstrap'], 'bootstrap.seed': s['bench']['seed']}
        _cli(f'bench {kind}', 'bench', kind, model=model, **flags, out=out, overrides=draws)
        return {'out': str(out)}

    def bench_ctrate(self, s: dict) -> dict:
        gold, reports = self.held_out_tables()
        data = self.paths['ctrate_cache']
        return self._bench('bench_ctrate', 'ct-rate', s, data=data, labels=gold, reports=reports)

    def bench_rad(self, s: dict) -> dict:
        rad = self.rad_root / 'radchestct'
        tables = [rad / f'img{x}.csv' for x in ('train', 'valid', 'test')]
        labels = concat_csv(tables, self.paths['bench_rad'] / 'labels_all.csv')
        data, mapping = self.paths['rad_cache'], s['bench']['rad_mapping']
        return self._bench('bench_rad', 'rad-chestct', s, data=data, labels=labels, mapping=mapping)

    @property
    def wants_grounding(self) -> bool:
        """Grounding needs the synthetic cohort's masks (a user's `data=` tree has none)."""
        return not self.cfg['data']

    @functools.cache  # noqa: B019 (one Demo per run; the ablation scores every arm on it)
    def held_out_grounding(self) -> tuple[Path, Path]:
        """The held-out patients' grounding set, `grounding/dataset.json` and `grounding/masks/`
        of the output folder, cut from the cohort's (which also lists the training patients):
        the test split's, or the validation patients' without one."""
        from benchmarks.grounding.dataset import read_dataset, write_dataset
        from ctcommon.atomic import atomic_path

        source = self.ctrate_root / 'grounding'
        target = self.paths['grounding']
        split = {'test': 'test', 'valid': 'val'}[self.held_out]
        cases = read_dataset(source / 'dataset.json', [split])
        (target / 'masks').mkdir(parents=True, exist_ok=True)
        for case in cases:
            mask = target / 'masks' / case.name
            with atomic_path(mask) as tmp:
                shutil.copyfile(source / 'masks' / case.name, tmp)
        write_dataset(target / 'dataset.json', cases)
        return target / 'dataset.json', target / 'masks'

    def bench_grounding(self, s: dict) -> dict:
        dataset, masks = self.held_out_grounding()
        prior = self.ctrate_root / 'grounding'
        _cli(
            'bench grounding',
            'bench',
            'grounding',
            model=self.paths['stage2'] / 'final',
            data=self.paths['ctrate_cache'],
            dataset=dataset,
            masks=masks,
            prior_from=prior / 'dataset.json',
            prior_masks=prior / 'masks',
            out=self.paths['bench_grounding'],
            n_bootstrap=s['bench']['bootstrap'],
            seed=s['bench']['seed'],
        )
        return {'out': str(self.paths['bench_grounding']), 'dataset': str(dataset)}

    def report(self, s: dict) -> dict:
        from ctclip.app.report import write_demo_report

        return write_demo_report(self)

    def stages(self) -> list[Stage]:
        c = self.cfg
        base = {'seed': c['seed'], 'recipe': c['recipe']}
        data = {
            **base,
            'n': c['n'],
            'n_rad': c['n_rad'],
            'test_min_count': c['test_min_count'],
            'data': c['data'],
            'layout': c['layout'],
        }
        # the resolved YAML, not only its path: an edited config must retrain, not resume
        train_configs = {k: load_config(c['train'][k]) for k in ('stage1', 'stage2')}
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
        if self.wants_grounding:
            stages.append(
                Stage(
                    'bench_grounding',
                    'benchmark grounding (held-out masks)',
                    self.bench_grounding,
                    {**data, 'train': c['train'], 'bench': c['bench']},
                    (self.paths['bench_grounding'], self.paths['grounding']),
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
