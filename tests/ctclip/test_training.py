"""The DeepSpeed engine in-process: stage 1 -> stage 2, exports, exact resume, signals, ZeRO-3."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
import torch
import yaml

from ctclip.config import load_config
from ctclip.training import train, with_defaults
from ctclip.training.checkpoint import latest_tag
from ctclip.training.evaluation import auroc, macro_auroc
from ctclip.training.run_log import read_metrics
from ctclip.training.settings import DataCfg
from ctclip.training.stages import build_model
from ctclip.training.trainer import Interrupted
from ctcommon.settings import to_mapping
from tests.ctclip.training_data import make_cohort

TINY_MODEL = {
    'name': 'resnet3d-tiny-tinybert',
    'overrides': {
        'vision_cfg': {'block_inplanes': [4, 8, 8, 16]},
        'text_cfg': {'width': 32, 'layers': 1},
    },
}


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp('cohort'), n_train=16, n_valid=6)


def config(cohort, out, stage='stage1-small.yaml', **sections):
    cfg = load_config(f'train/{stage}')
    cfg['model'] = {
        **cfg['model'],
        **TINY_MODEL,
        'overrides': {**TINY_MODEL['overrides'], **cfg['model'].get('overrides', {})},
    }
    cfg['data'].update(
        cache=str(cohort['cache']),
        labels=str(cohort['labels']),
        reports=str(cohort['reports']),
        evidence=str(cohort['evidence']),
        batch_size=4,
        num_workers=0,
        max_length=48,
        evidence_length=16,
        max_evidence=4,
    )
    cfg['train'].update(
        output_dir=str(out),
        steps=6,
        epochs=None,
        log_every=1,
        ckpt_every=100,
        eval_every=0,
        progress=False,
    )
    cfg['schedule']['warmup_steps'] = 2
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return to_mapping(with_defaults(cfg))  # validated, as a mapping the tests may edit


def losses(out):
    return [(r['step'], r['loss']) for r in read_metrics(out / 'metrics.jsonl') if 'loss' in r]


def test_auroc_matches_the_rank_definition():
    sk = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 50), np.round(rng.random(50), 1)  # with ties
    assert auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
    assert np.isnan(auroc(np.ones(5), rng.random(5)))
    mean, per_class = macro_auroc(
        np.array([[1, -1], [0, -1], [1, 1]]), np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3]])
    )
    assert mean == 1.0 and np.isnan(per_class[1])


def test_stage1_then_evidence_stage2_with_pseudo_labels(cohort, tmp_path, caplog):
    from ctclip.model import CTClip

    cfg1 = config(cohort, tmp_path / 's1')
    cfg1['loss']['bce']['pos_weight'] = 'balanced'
    with caplog.at_level(logging.INFO, logger='ctclip.training.trainer'):
        final1 = train(cfg1)
    resolved = [r for r in caplog.records if 'pos_weight balanced' in r.getMessage()]
    assert len(resolved) == 1 and len(resolved[0].args[0]) == 18
    assert all(1.0 <= w <= 5.0 for w in resolved[0].args[0])
    run1 = tmp_path / 's1'
    torch.manual_seed(int(cfg1['train']['seed']))  # as the trainer does: the same initial weights
    initial = build_model(cfg1['model'], None)
    trained = CTClip.from_pretrained(final1)
    for part in ('text', 'text_proj'):  # stage 1 leaves what it never runs untouched
        before, after = getattr(initial, part).state_dict(), getattr(trained, part).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), part
    assert not torch.equal(initial.image_proj.weight, trained.image_proj.weight)
    for name in ('metrics.jsonl', 'training_curves.png', 'resolved_config.yaml', 'tensorboard'):
        assert (run1 / name).exists(), name
    assert latest_tag(run1 / 'checkpoints') == 'step_00000006'
    # the resolved config is the typed one: every key of every section, nothing else
    resolved_cfg = yaml.safe_load((run1 / 'resolved_config.yaml').read_text(encoding='utf-8'))
    assert resolved_cfg == to_mapping(with_defaults(resolved_cfg))
    assert set(resolved_cfg['data']) == {f.name for f in dataclasses.fields(DataCfg)}
    assert [s for s, _ in losses(run1)] == [1, 2, 3, 4, 5, 6]
    cfg2 = config(
        cohort,
        tmp_path / 's2',
        'stage2-evidence-small.yaml',
        data={'paired_fraction': 0.5},
        train={'init_from': str(final1), 'eval_every': 3},
    )
    cfg2['loss']['token_evidence'] = {'weight': 0.5}  # the quotes feed both evidence terms
    final2 = train(cfg2)
    records = read_metrics(tmp_path / 's2' / 'metrics.jsonl')
    terms = {k for r in records for k in r if k.startswith('loss/')}
    assert {
        'loss/clip',
        'loss/evidence',
        'loss/token_evidence',
        'loss/multi_positive',
        'loss/text_bce',
        'loss/bce',
    } <= terms
    evals = [r for r in records if 'val/zero_shot_auroc' in r]
    assert [r['step'] for r in evals] == [3, 6] and 0.0 <= evals[-1]['val/zero_shot_auroc'] <= 1.0
    pseudo = np.load(tmp_path / 's2' / 'pseudo_labels.npz')
    assert (
        len(pseudo['volume_id']) == 8
        and ((pseudo['probabilities'] > 0) & (pseudo['probabilities'] < 1)).all()
    )
    model = CTClip.from_pretrained(final2).eval()
    assert model.prototypes is not None and model.logit_scale.dim() == 0
    assert model.config['recipe']['train_crop_zyx'] == [16, 32, 32]
    assert model.config['window'] == [-1000.0, 200.0, -1.0, 1.0]  # what inference will apply
    with torch.no_grad():
        out = model(image=torch.zeros(1, 1, 16, 32, 32))
    assert out['image_features'].shape == (1, 64)


@pytest.fixture(scope='module')
def reference(cohort, tmp_path_factory):
    """An uninterrupted 6-step stage-2 run (CLIP + BCE, dropout on, ZeRO-2) to compare resumes with."""
    out = tmp_path_factory.mktemp('reference')
    train(resume_config(cohort, out))
    return out


def resume_config(cohort, out, zero_stage=2, **train_cfg):
    """ZeRO-2 by name: on one rank the `zero2` preset alone would run as ZeRO-0."""
    return config(
        cohort,
        out,
        'stage2-clip-small.yaml',
        loss={'bce': 0.5, 'clip': 1.0},
        deepspeed={'config': 'zero2', 'zero_stage': zero_stage},
        train={'ckpt_every': 2, **train_cfg},
    )


def test_resume_after_stop_reproduces_the_uninterrupted_losses(cohort, reference, tmp_path):
    with pytest.raises(Interrupted) as stop:
        train(resume_config(cohort, tmp_path, stop_after=3))
    assert stop.value.step == 3 and latest_tag(tmp_path / 'checkpoints') == 'step_00000003'
    assert not (tmp_path / 'final').exists()
    train(resume_config(cohort, tmp_path))
    np.testing.assert_allclose(losses(tmp_path), losses(reference), rtol=1e-6, atol=1e-7)
    from safetensors.torch import load_file

    a, b = (
        load_file(reference / 'final' / 'model.safetensors'),
        load_file(tmp_path / 'final' / 'model.safetensors'),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_sigusr1_checkpoints_exits_and_resumes_exactly(cohort, reference, tmp_path):
    metrics = tmp_path / 'metrics.jsonl'

    def send_when_training():
        deadline = time.time() + 120
        while time.time() < deadline and not (
            metrics.exists() and metrics.read_text(encoding='utf-8').count('\n') >= 2
        ):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=send_when_training, daemon=True).start()
    with pytest.raises(Interrupted) as stop:
        train(resume_config(cohort, tmp_path))
    assert stop.value.reason == 'SIGUSR1' and 2 <= stop.value.step < 6
    train(resume_config(cohort, tmp_path))
    np.testing.assert_allclose(losses(tmp_path), losses(reference), rtol=1e-6, atol=1e-7)


def test_one_rank_runs_zero0_unless_a_resumed_checkpoint_holds_another_stage(
    cohort, reference, tmp_path
):
    from ctclip.training.checkpoint import checkpoint_zero_stage
    from ctclip.training.trainer import Trainer

    assert (
        Trainer(resume_config(cohort, tmp_path / 'fresh', None)).engine.zero_optimization_stage()
        == 0
    )
    with pytest.raises(Interrupted):  # a ZeRO-2 run (asked for by name) stops at step 2
        train(resume_config(cohort, tmp_path, stop_after=2))
    assert checkpoint_zero_stage(tmp_path / 'checkpoints') == 2
    resumed = Trainer(resume_config(cohort, tmp_path, None))  # the preset alone, as users run it
    assert resumed.engine.zero_optimization_stage() == 2 and resumed.start_step == 2
    train(resume_config(cohort, tmp_path, None))
    np.testing.assert_allclose(losses(tmp_path), losses(reference), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    'zero, explicit, resume, stage',
    [
        ({'stage': 2}, None, None, 0),  # nothing to shard on one rank
        ({'stage': 3}, None, 0, 0),  # resuming a ZeRO-0 checkpoint
        ({'stage': 2}, 2, None, 2),  # asked for by name
        ({'stage': 1}, None, 2, 2),  # the checkpoint's optimizer state is ZeRO-2's
        ({'stage': 2}, None, -1, 2),  # an older checkpoint of some stage >= 1: keep the config's
        ({'stage': 3, 'offload_param': {'device': 'cpu'}}, None, None, 3),  # offload needs ZeRO
        ({'stage': 0}, None, None, 0),
    ],
)
def test_one_rank_stage_rules(zero, explicit, resume, stage):
    from ctclip.training.deepspeed_config import one_rank_stage

    assert one_rank_stage({'zero_optimization': zero}, explicit, resume) == stage


def test_resume_refuses_a_changed_data_order(cohort, reference, tmp_path):
    with pytest.raises(Interrupted):
        train(resume_config(cohort, tmp_path, stop_after=2))
    with pytest.raises(ValueError, match='settings that fix the data order changed'):
        train(resume_config(cohort, tmp_path, seed=1))


def test_zero3_bf16_autocast_exports_one_consolidated_model(cohort, tmp_path):
    from ctclip.model import CTClip

    cfg = config(
        cohort,
        tmp_path,
        deepspeed={'config': 'zero3', 'zero_stage': 3, 'precision': 'bf16-autocast'},
        train={'steps': 2, 'eval_every': 2},
    )
    final = train(cfg)
    model = CTClip.from_pretrained(final)  # strict: every tensor present with its full shape
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 100_000
    config_json = json.loads((final / 'config.json').read_text(encoding='utf-8'))
    assert config_json['name'] == 'resnet3d-tiny-tinybert'
    assert all(
        np.isfinite(r['loss']) for r in read_metrics(tmp_path / 'metrics.jsonl') if 'loss' in r
    )


def test_bad_settings_fail_before_training(cohort, tmp_path):
    with pytest.raises(ValueError, match='deepspeed.precision must be one of'):
        train(config(cohort, tmp_path, deepspeed={'precision': 'fp8'}))
    with pytest.raises(FileNotFoundError, match='deepspeed.config must be'):
        train(config(cohort, tmp_path, deepspeed={'config': 'zero9'}))
    with pytest.raises(ValueError, match='cannot fill one global batch'):
        train(config(cohort, tmp_path, data={'batch_size': 64}))


def test_cli_stops_with_status_0_and_the_rerun_finishes(cohort, tmp_path, capsys):
    import yaml

    from ctclip.cli import main

    cfg = config(cohort, tmp_path / 'run', train={'steps': 3})
    (tmp_path / 'run.yaml').write_text(yaml.safe_dump(cfg), encoding='utf-8')
    argv = ['train', '--config', str(tmp_path / 'run.yaml'), '--local_rank=0']
    assert main([*argv, 'train.stop_after=2']) == 0
    assert 'Checkpointed at step 2' in capsys.readouterr().out
    assert main(argv) == 0
    assert (tmp_path / 'run' / 'final' / 'model.safetensors').exists()
    assert [s for s, _ in losses(tmp_path / 'run')] == [1, 2, 3]


def test_data_window_stack_overrides_the_model_window_and_travels_to_stage_2(cohort, tmp_path):
    from ctclip.model import CTClip

    stack = [[-1000, 200], [-160, 240]]
    cfg1 = config(cohort, tmp_path / 's1', data={'window': stack}, train={'steps': 2})
    cfg1['model']['overrides']['vision_cfg'] = {
        **cfg1['model']['overrides'].get('vision_cfg', {}),
        'in_chans': 2,
    }
    final1 = train(cfg1)
    assert CTClip.from_pretrained(final1).config['window'] == [
        [-1000.0, 200.0, -1.0, 1.0],
        [-160.0, 240.0, -1.0, 1.0],
    ]
    cfg2 = config(
        cohort,
        tmp_path / 's2',
        'stage2-clip-small.yaml',
        train={'init_from': str(final1), 'steps': 2},
    )
    cfg2['model']['overrides']['vision_cfg'] = cfg1['model']['overrides']['vision_cfg']
    cfg2['data']['window'] = None  # stage 2 takes the window the stage-1 model config names
    final2 = train(cfg2)
    assert (
        CTClip.from_pretrained(final2).config['window']
        == CTClip.from_pretrained(final1).config['window']
    )


@pytest.mark.parametrize(
    ('cuda', 'batchnorm', 'json_name', 'want'),
    [
        (True, False, 'zero2', 'bf16'),  # a ViT on a GPU: DeepSpeed's bf16 weights
        (True, True, 'zero2', 'autocast'),  # a ResNet on a GPU: bf16 BatchNorm fails in backward
        (True, True, 'zero2-bf16', 'autocast'),  # also when the JSON itself enables bf16
        (False, False, 'zero2', 'autocast'),  # every model on a CPU
    ],
)
def test_bf16_means_bf16_weights_only_on_a_gpu_without_batchnorm(
    monkeypatch, cuda, batchnorm, json_name, want
):
    from ctclip.training.deepspeed_config import deepspeed_config
    from ctclip.training.precision import uses_autocast

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    cfg = with_defaults(
        {
            'deepspeed': {'config': json_name, 'precision': 'bf16'},
            'data': {'batch_size': 2},
        }
    )
    out = deepspeed_config(cfg, world_size=1, batchnorm=batchnorm)
    assert bool(out.get('bf16', {}).get('enabled')) == (want == 'bf16')
    assert uses_autocast(out) == (want == 'autocast')
    # torch AdamW runs fused (one kernel for all tensors) exactly where CUDA is there
    assert out['optimizer']['params'].get('fused', False) == cuda


def test_has_batchnorm_finds_the_resnet_norms():
    from ctclip.training.precision import has_batchnorm

    assert has_batchnorm(build_model(TINY_MODEL, None))
    assert not has_batchnorm(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)))


def test_channels_last_feeds_an_ndhwc_image_and_trains_like_ncdhw(cohort, tmp_path):
    from ctclip.training.trainer import Trainer

    runs = {}
    for channels_last in (False, True):
        # two windows, so two channels: with one, NCDHW and NDHWC are the same memory
        cfg = config(
            cohort, tmp_path / str(channels_last), data={'window': [[-1000, 200], [-160, 240]]},
            train={'steps': 2},
        )  # fmt: skip
        cfg['model']['channels_last'] = channels_last
        cfg['model']['overrides']['vision_cfg'] = {
            **cfg['model']['overrides'].get('vision_cfg', {}),
            'in_chans': 2,
        }
        trainer = Trainer(cfg)
        batch = next(trainer._loader())
        image = trainer.model.prepare_image(batch['image'])  # windowed: int16 in, 2 channels out
        assert image.shape[1] == 2 and image.dtype == torch.float32
        assert image.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
        runs[channels_last] = [float(trainer._micro_step(batch, s, 0)['loss']) for s in range(2)]
    # the same arithmetic in another memory layout: equal up to float reassociation
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_int16_batches_train_exactly_like_host_windowed_floats(cohort, tmp_path):
    """The loader ships int16 HU and the model windows it: the same losses, bit for bit, as the
    float32 crops the host windowed before (the data order is the loader's, unchanged)."""
    from ctclip.training.trainer import Trainer

    losses = {}
    for form in ('int16', 'float32'):
        trainer = Trainer(config(cohort, tmp_path / form, train={'steps': 2}))
        batch = next(trainer._loader())
        assert batch['image'].dtype == torch.int16
        if form == 'float32':
            batch['image'] = torch.from_numpy(trainer.train_ds.window(batch['image'].numpy()))
        losses[form] = [float(trainer._micro_step(batch, s, 0)['loss']) for s in range(2)]
    assert losses['int16'] == losses['float32']


def test_the_model_windows_integer_images_and_passes_floats_through():
    model = build_model(TINY_MODEL, None)
    hu = torch.full((1, 1, 8, 16, 16), -400, dtype=torch.int16)
    with pytest.raises(ValueError, match='comes? with a window'):
        model.prepare_image(hu)  # no window in the config, none given
    assert torch.equal(model.prepare_image(hu, [-1000, 200]), torch.zeros(1, 1, 8, 16, 16))
    model.config['window'] = [-1000, 200]
    assert torch.equal(model.prepare_image(hu), torch.zeros(1, 1, 8, 16, 16))
    already = torch.rand(1, 1, 8, 16, 16)
    assert model.prepare_image(already) is already


def test_a_misspelt_train_setting_fails_in_one_line_before_any_work(tmp_path, capsys):
    from ctclip.cli import main

    out = tmp_path / 'run'
    argv = ['train', '--config', 'train/stage1-small', f'train.output_dir={out}']
    assert main([*argv, 'train.ckpt_evry=10', 'data.batchsize=4']) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'train.ckpt_evry' in section 'train'; did you mean 'train.ckpt_every'?" in err
    assert "'data.batchsize' in section 'data'; did you mean 'data.batch_size'?" in err
    assert not out.exists(), 'nothing may be created before the settings are valid'
    assert main([*argv, 'train.ckpt_evry=10']) == 2
    assert 'Valid keys: ckpt_every,' in capsys.readouterr().err


@pytest.mark.parametrize(
    ('section', 'key', 'value', 'error', 'message'),
    [
        ('data', 'batch_size', 0, ValueError, 'data.batch_size must be a positive int, not 0'),
        ('train', 'grad_accum', 1.5, TypeError, 'train.grad_accum must be a positive int'),
        ('train', 'resume', 'yes', TypeError, "train.resume must be true or false, not 'yes'"),
        ('optim', 'lr', 'fast', TypeError, "optim.lr must be a number, not 'fast'"),
        ('deepspeed', 'zero_stage', 4, ValueError, 'deepspeed.zero_stage must be 0, 1, 2 or 3'),
        ('schedule', 'min_lr_ratio', 2, ValueError, 'schedule.min_lr_ratio must be in [0, 1]'),
        ('loss', 'clip', {'wieght': 1.0}, ValueError, "Unknown setting 'loss.clip.wieght'"),
    ],
)
def test_train_settings_are_typed_and_checked(section, key, value, error, message):
    with pytest.raises(error, match=re.escape(message)):
        with_defaults({section: {key: value}})


def test_train_settings_read_yaml_1_1_numbers_and_keep_the_default_loss():
    cfg = with_defaults({'optim': {'lr': '1e-4'}, 'loss': {'clip': 1.0}})
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    # a config naming one term keeps the default bce beside it (merged, as before)
    assert cfg.loss == {'bce': {'weight': 1.0}, 'clip': 1.0}
    assert cfg.data.batch_size == 2 and cfg.train.ckpt_every == 100 and cfg.train.steps is None
