"""The demo's stage runner, its report, and the ablation plan (the quick demo itself is in test_demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctclip.app.ablation import EVIDENCE_TERMS, ablation_plan, plot, render_table, summarise
from ctclip.app.pipeline import Pipeline, Stage, cli_argv
from ctclip.app.report import render_html
from ctclip.config import apply_overrides, get_dotted, load_config
from ctclip.losses import active_terms


def _counting_stage(name: str, calls: list[str], settings: dict | None = None) -> Stage:
    def run(s: dict) -> dict:
        calls.append(name)
        return {'ran': name, **s}

    return Stage(name, name, run, settings or {})


def test_pipeline_skips_finished_stages_and_reruns_changed_ones(tmp_path):
    calls: list[str] = []
    stages = [_counting_stage('a', calls, {'x': 1}), _counting_stage('b', calls, {'y': 2})]
    first = Pipeline(tmp_path, stages, progress=False).run()
    assert calls == ['a', 'b']
    assert first['b'] == {'ran': 'b', 'y': 2}

    again = Pipeline(tmp_path, stages, progress=False).run()
    assert calls == ['a', 'b'], 'finished stages must be skipped'
    assert again == first

    changed = [_counting_stage('a', calls, {'x': 1}), _counting_stage('b', calls, {'y': 3})]
    Pipeline(tmp_path, changed, progress=False).run()
    assert calls == ['a', 'b', 'b'], 'a stage whose settings changed must run again'

    Pipeline(tmp_path, changed, progress=False).run(force=('a',))
    assert calls[-2:] == ['a', 'b'], 'a forced stage reruns, and so does every stage after it'


def test_pipeline_failure_leaves_no_marker_and_resumes_there(tmp_path):
    calls: list[str] = []

    def boom(s: dict) -> dict:
        raise RuntimeError('interrupted')

    stages = [_counting_stage('a', calls), Stage('b', 'b', boom)]
    with pytest.raises(RuntimeError, match='interrupted'):
        Pipeline(tmp_path, stages, progress=False).run()
    assert (tmp_path / 'stages' / 'a.json').exists()
    assert not (tmp_path / 'stages' / 'b.json').exists()
    stages[1] = _counting_stage('b', calls)
    Pipeline(tmp_path, stages, progress=False).run()
    assert calls == ['a', 'b']
    assert (
        json.loads((tmp_path / 'stages' / 'b.json').read_text(encoding='utf-8'))['summary']['ran']
        == 'b'
    )


class Recorder:
    """Stages that write a file into their own output folder and log each run."""

    def __init__(self, root: Path):
        self.root, self.runs = root, []

    def stage(self, name: str, settings: dict, fail: bool = False) -> Stage:
        out = self.root / name

        def run(s: dict) -> dict:
            self.runs.append(name)
            out.mkdir(parents=True, exist_ok=True)
            (out / f'run{len(self.runs)}').touch()
            if fail:
                raise KeyboardInterrupt
            return {'files': sorted(p.name for p in out.iterdir())}

        return Stage(name, name, run, settings, (out,))

    def pipeline(self, settings: dict[str, dict], fail: str = '') -> Pipeline:
        stages = [self.stage(n, s, fail=n == fail) for n, s in settings.items()]
        return Pipeline(self.root, stages, progress=False)


SETTINGS = {'a': {'n': 1}, 'b': {'epochs': 2}, 'c': {}}


def test_new_settings_start_that_stage_afresh_and_redo_what_follows(tmp_path):
    rec = Recorder(tmp_path)
    rec.pipeline(SETTINGS).run()
    results = rec.pipeline({**SETTINGS, 'b': {'epochs': 3}}).run()
    assert rec.runs == ['a', 'b', 'c', 'b', 'c']
    assert results['b'] == {'files': ['run4']}  # the old run's outputs were removed, not resumed
    assert results['a'] == {'files': ['run1']}


def test_force_redoes_a_stage_and_everything_after_it(tmp_path):
    rec = Recorder(tmp_path)
    rec.pipeline(SETTINGS).run()
    rec.pipeline(SETTINGS).run(force=('b',))
    assert rec.runs == ['a', 'b', 'c', 'b', 'c']


def test_an_interrupted_stage_keeps_its_outputs_to_resume_from(tmp_path):
    rec = Recorder(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        rec.pipeline(SETTINGS, fail='b').run()
    results = rec.pipeline(SETTINGS).run()
    assert rec.runs == ['a', 'b', 'b', 'c']
    assert results['b'] == {'files': ['run2', 'run3']}  # the partial run is still there


def test_pipeline_rejects_duplicate_stage_names(tmp_path):
    with pytest.raises(ValueError, match='unique'):
        Pipeline(tmp_path, [_counting_stage('a', []), _counting_stage('a', [])])


def test_render_html_tables_images_and_escaping():
    text = '# Title\n\n| a | b |\n|---|---|\n| 1 | <2> |\n\n![ROC](bench/roc.png)\n'
    out = render_html(text)
    assert '<h1>Title</h1>' in out
    assert '<th>a</th><th>b</th>' in out and '<td>1</td><td>&lt;2&gt;</td>' in out
    assert '<img src="bench/roc.png" alt="ROC">' in out
    aligned = render_html('| class | n |\n|:---|---:|\n| x | 3 |\n')
    assert '---' not in aligned and '<td>x</td><td>3</td>' in aligned


def test_ablation_arms_are_valid_configs():
    """Every override of every arm names a key that the arm's config really has."""
    plan = ablation_plan()
    names = [a.name for a in plan.arms]
    assert len(set(names)) == len(names)
    assert {a.group for a in plan.arms} == {'Li et al.', 'LGDEA', 'loss terms'}
    stage1 = load_config('train/stage1-small')
    for extra in plan.stage1.values():
        for token in extra:
            assert get_dotted(stage1, token.split('=')[0]) is not None, token
    for arm in plan.arms:
        cfg = load_config(arm.stage2)
        for token in arm.overrides:
            key = token.split('=')[0].removesuffix('.enabled')
            assert get_dotted(cfg, key) is not None, f'{arm.name}: {key} is not in {arm.stage2}'
        assert arm.stage1 in (None, *plan.stage1)
        if ' without ' in arm.name and arm.name.split(' without ')[1] in EVIDENCE_TERMS:
            term = arm.name.split(' without ')[1]
            before = {t.name for t in active_terms(cfg['loss'])}
            after = {
                t.name for t in active_terms(apply_overrides(cfg, list(arm.overrides))['loss'])
            }
            assert before - after == {term}, f'{arm.name} must switch off {term} and only it'
    evidence = load_config('train/stage2-evidence-small')
    for term in EVIDENCE_TERMS:
        assert get_dotted(evidence, f'loss.{term}.weight'), (
            f'{term} must be on in the evidence config'
        )


def test_ablation_summary_mean_std_and_table(tmp_path):
    plan = ablation_plan()
    per_seed = [
        {a.name: {'auroc': 0.7 + 0.1 * s, 'pointing_game': 0.2 * s} for a in plan.arms}
        for s in range(3)
    ]
    rows = summarise(plan, per_seed)
    assert rows[0]['metrics']['auroc']['mean'] == pytest.approx(0.8)
    assert rows[0]['metrics']['auroc']['std'] == pytest.approx(0.1)
    assert rows[0]['metrics']['pointing_game']['mean'] == pytest.approx(0.2)
    assert 'global_dice' not in rows[0]['metrics']  # a metric no seed has is left out
    table = render_table(rows, 3)
    assert '0.800 ± 0.100' in table and '0.200 ± 0.200' in table
    del rows[1]['metrics']['pointing_game']  # an arm not grounded
    assert 'not scored' in render_table(rows, 3)
    plot(rows, tmp_path / 'ablation.png')
    assert (tmp_path / 'ablation.png').stat().st_size > 0
    assert 'pointing game' in table and table.count('\n') == len(plan.arms) + 1


def test_ablation_trains_each_distinct_configuration_once(tmp_path, monkeypatch):
    """supervised+clip and clip-100%-pairs are one configuration: one run, one score for both."""
    from ctclip.app.ablation import Ablation

    ablation = Ablation({'out': str(tmp_path), 'data': None, 'layout': 'both'}, seeds=1)
    trained = []

    def train(config, out, seed, epochs, extra):
        trained.append(out.name)
        return out / 'final'

    monkeypatch.setattr(ablation, '_train', train)
    grounded = []

    def score(model, out, grounding=True):
        grounded.extend([out.parent.name] if grounding else [])
        return {'auroc': len(trained) / 100}

    monkeypatch.setattr(ablation, '_score', score)
    scores = ablation.run_seed(0)
    arms = ablation.plan.arms
    assert len(trained) == len(ablation.plan.stage1) + len({a.training for a in arms}) == 2 + 11
    assert len(set(trained)) == len(trained)
    assert scores['clip-100%-pairs'] == scores['supervised+clip']
    assert len({s['auroc'] for s in scores.values()}) == len(arms) - 1
    # grounding is scored for the claims' arms only (it costs about as much as training)
    assert sorted(grounded) == sorted(
        ['supervised+clip', 'clip-from-scratch', 'evidence-10pct-pairs', 'clip-10pct-pairs']
    )


def test_cli_argv_is_the_command_line_a_user_types():
    argv = cli_argv(
        'label', 'eval', out_dir=Path('x/y'), small=True, model=None, quiet=False, n=3,
        overrides={'train.seed': 1, 'data.cache': Path('c.h5')}, extra=['train.steps=2'],
    )  # fmt: skip
    assert argv == [
        'label', 'eval', '--out-dir', 'x/y', '--small', '--n', '3',
        'train.seed=1', 'data.cache=c.h5', 'train.steps=2',
    ]  # fmt: skip


def test_demo_stages_run_the_same_commands_as_a_user(tmp_path, monkeypatch):
    """Each stage is one `ctclip` command line, with packaged config names, in a fixed order."""
    import ctclip.cli
    from ctclip.app.demo import DEFAULTS, Demo

    calls: list[list[str]] = []
    monkeypatch.setattr(ctclip.cli, 'main', lambda argv: calls.append(argv) or 0)
    cfg = {**DEFAULTS, 'out': str(tmp_path), 'labeler': {**DEFAULTS['labeler'], 'model': 'm'}}
    demo = Demo(cfg)
    settings = {**cfg, 'workers': 2}
    demo.synth(settings)
    demo.preprocess(settings)
    demo.train_stage2(settings)
    out = tmp_path.resolve()
    assert calls[0] == [
        'synth', '--out', f'{out}/cohort', '--n', '200', '--seed', '0', '--layout', 'ct-rate',
        '--test-min-count', '25', '--small', '--workers', '2',
    ]  # fmt: skip
    assert calls[1][:7] == [
        'synth', '--out', f'{out}/cohort-rad', '--n', '0', '--seed', '1',
    ]  # fmt: skip
    assert calls[1][8:11] == ['rad-chestct', '--test-min-count', '25']
    assert calls[2] == [
        'preprocess', '--input', f'{out}/cohort', '--out', f'{out}/cache/ctrate.h5',
        '--recipe', 'small', '--workers', '2',
    ]  # fmt: skip
    assert calls[4] == [
        'train', '--config', 'train/stage2-evidence-small',
        f'data.cache={out}/cache/ctrate.h5', f'data.labels={out}/labels/labels.csv',
        f'data.reports={out}/labels/reports.csv', f'data.evidence={out}/labels/evidence.jsonl',
        f'train.output_dir={out}/train/stage2', 'train.seed=0',
        f'train.init_from={out}/train/stage1/final',
    ]  # fmt: skip


def test_a_misspelt_demo_setting_fails_in_one_line_before_any_stage(tmp_path, capsys):
    from ctclip.cli import main

    out = tmp_path / 'demo'
    assert main(['demo', '--out', str(out), 'labeler.bakend=openai']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'labeler.bakend' in section 'labeler'; did you mean 'labeler.backend'?" in err
    assert not out.exists()


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_ablation_claims_are_resolved_by_a_paired_bootstrap(tmp_path):
    """From the runs' own files: a clearly better arm is 'reproduced', identical arms are
    'unresolved' with the interval [0, 0], and the README sentences say so."""
    import numpy as np

    from ctclip.app.ablation import Ablation, claim_sentences, render_claims, resolve_claims
    from ctcommon.findings import FINDINGS

    ablation = Ablation({'out': str(tmp_path), 'data': None, 'layout': 'both'}, seeds=3)
    rng = np.random.default_rng(0)
    volumes = [f'test_{p}_a_{r}.nii.gz' for p in range(1, 31) for r in (1, 2)]
    labels = np.repeat(rng.integers(0, 2, size=(30, len(FINDINGS))), 2, axis=0)
    gold, _ = ablation.demo.held_out_tables()
    _write_csv(
        gold, ['VolumeName', *FINDINGS], [[v, *row] for v, row in zip(volumes, labels, strict=True)]
    )
    pairs = [(f'test_{p}', f'test_{p}_a_1.nii.gz', c) for p in range(1, 31) for c in FINDINGS[:2]]
    header = ['patient', 'case', 'category', 'finding', 'dice', 'hit', 'tp', 'fp', 'fn', 'pointing']
    for seed in ablation.seeds:
        dirs = ablation.run_dirs(seed)
        shared = rng.random(labels.shape)  # evidence-10% and clip-10% score alike
        for arm, scores in (
            ('supervised+clip', labels + 0.01 * rng.random(labels.shape)),
            ('clip-from-scratch', rng.random(labels.shape)),
            ('evidence-10%-pairs', shared),
            ('clip-10%-pairs', shared),
        ):
            bench = dirs[arm] / 'bench'
            _write_csv(bench / 'scores.csv', ['VolumeName', *FINDINGS],
                       [[v, *row] for v, row in zip(volumes, scores, strict=True)])  # fmt: skip
            hit = int(arm == 'supervised+clip')
            _write_csv(bench / 'grounding' / 'pairs.csv', header,
                       [[p, c, k, 'x', 0, 0, 0, 0, 0, hit] for p, c, k in pairs])  # fmt: skip
    claims = {c['group']: c for c in resolve_claims(ablation, n_draws=300)}
    li, lgdea = claims['Li et al.'], claims['LGDEA']
    assert li['n_patients'] == 30 and li['n_seeds'] == 3 and li['n_volumes'] == 60
    assert li['auroc']['verdict'] == 'reproduced' and li['auroc']['ci_low'] > 0.2
    assert li['pointing_game']['difference'] == 1.0
    assert li['pointing_game']['verdict'] == 'reproduced'
    assert lgdea['auroc']['difference'] == 0.0
    assert (lgdea['auroc']['ci_low'], lgdea['auroc']['ci_high']) == (0.0, 0.0)
    assert lgdea['auroc']['verdict'] == 'unresolved'
    table = render_claims(list(claims.values()))
    assert '| LGDEA | evidence-10%-pairs | clip-10%-pairs | zero-shot macro AUROC |' in table
    assert table.count('| reproduced |') == 2 and table.count('| unresolved |') == 2
    sentences = claim_sentences(list(claims.values()))
    assert '**Li et al.**' in sentences[0] and '**reproduced**' in sentences[0]
    assert '**unresolved**' in sentences[1] and '[+0.000, +0.000]' in sentences[1]
    assert '30 test patients and 3 seeds' in sentences[1]
