"""`ctclip bench grounding` end to end on a synthetic cohort: synth masks -> preprocess -> maps ->
the same metrics for the model, a random map and the location prior, in one metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.grounding import runner as R
from benchmarks.grounding.dataset import read_dataset


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from ctclip.cli import main
    from ctclip.factory import create_model
    from synth import generate_cohort

    root = tmp_path_factory.mktemp('grounding')
    generate_cohort(root / 'cohort', n=8, seed=2, small=True, workers=1, progress=False)
    cache = root / 'cache.h5'
    argv = ['preprocess', '--input', str(root / 'cohort'), '--out', str(cache)]
    assert main([*argv, '--recipe', 'small', '--no-progress']) == 0
    torch.manual_seed(0)
    model = create_model('resnet3d-tiny-tinybert', vision_cfg={'block_inplanes': [4, 8, 8, 8]})
    model.save_pretrained(root / 'model')
    return root, cache


def test_bench_grounding_scores_model_and_baselines(setup):
    root, cache = setup
    grounding = root / 'cohort' / 'grounding'
    settings = R.GroundingSettings(splits=['val'], overlays=2)
    settings.bootstrap.n_draws = 30
    out = root / 'bench'
    result = R.run_model(
        root / 'model',
        cache,
        grounding / 'dataset.json',
        grounding / 'masks',
        out,
        settings=settings,
    )
    assert result['failures'] == []
    val = read_dataset(grounding / 'dataset.json', ['val'])
    n_pairs = sum(len(c.findings) for c in val)
    saved = json.loads((out / 'metrics.json').read_text())
    assert set(saved['baselines']) == {'random', 'location_prior'}
    for arm in (saved['model'], *saved['baselines'].values()):
        assert arm['n_pairs'] == n_pairs
        assert set(arm['metrics']) == {
            'global_dice',
            'global_hit_rate',
            'instance_precision',
            'instance_recall',
            'instance_f1',
            'pointing_game',
        }
        assert all(0.0 <= e['value'] <= 1.0 for e in arm['metrics'].values())
    # The location prior knows where findings lie: it beats the random map on pointing and Dice.
    prior, rand = saved['baselines']['location_prior'], saved['baselines']['random']
    assert prior['metrics']['global_dice']['value'] > rand['metrics']['global_dice']['value']
    assert any('training masks' in note for note in saved['notes'])
    assert len(list((out / 'overlays').glob('*.png'))) == 2
    report = (out / 'report.md').read_text()
    assert '| metric | model | random | location_prior |' in report


def test_gold_maps_score_one_through_the_model_path(setup, monkeypatch):
    """Ground truth served as the model's map (via ground()) scores 1 on Dice after thresholding
    at the true size: the model path's geometry and the metrics agree."""
    import ctclip.grounding as G

    root, cache = setup
    grounding = root / 'cohort' / 'grounding'
    real = G.ground

    def oracle(model, name, phrases, cache=None, **kwargs):
        from benchmarks.grounding.dataset import read_masks

        result = real(model, name, phrases, cache=cache, **kwargs)
        vol = read_masks(grounding / 'masks' / name, len(phrases))
        result.maps = vol.masks.transpose(0, 3, 2, 1).astype(np.float32)
        return result

    monkeypatch.setattr(G, 'ground', oracle)
    settings = R.GroundingSettings(splits=['val'], overlays=0, threshold='max_fraction')
    settings.threshold_value = 0.5
    settings.bootstrap.n_draws = 10
    result = R.run_model(
        root / 'model',
        cache,
        grounding / 'dataset.json',
        grounding / 'masks',
        root / 'oracle',
        settings=settings,
    )
    metrics = result['model']['metrics']
    assert metrics['pointing_game']['value'] == 1.0
    assert metrics['global_dice']['value'] > 0.95  # the body mask may clip a few voxels


def test_prior_must_not_hold_scored_volumes(setup):
    root, cache = setup
    grounding = root / 'cohort' / 'grounding'
    with pytest.raises(ValueError, match='--prior-from must hold training volumes only'):
        R.run_model(
            root / 'model',
            cache,
            grounding / 'dataset.json',
            grounding / 'masks',
            root / 'leak',
            prior_from=grounding / 'dataset.json',
            settings=R.GroundingSettings(splits=['train']),
        )


def test_cli_bench_grounding(setup, capsys):
    from ctclip.cli import main

    root, cache = setup
    grounding = root / 'cohort' / 'grounding'
    argv = ['bench', 'grounding', '--model', str(root / 'model'), '--data', str(cache)]
    argv += ['--dataset', str(grounding / 'dataset.json'), '--masks', str(grounding / 'masks')]
    argv += ['--out', str(root / 'cli'), '--split', 'val', '--n-bootstrap', '20', 'overlays=0']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'location_prior        pointing_game:' in out and 'random' in out
    saved = json.loads((root / 'cli' / 'metrics.json').read_text())
    assert saved['options']['splits'] == ['val'] and saved['options']['bootstrap']['n_draws'] == 20
    assert main([*argv, 'threshold=otsu']) == 2
    assert (
        "threshold rule must be one of ['top_fraction', 'max_fraction']" in capsys.readouterr().err
    )
