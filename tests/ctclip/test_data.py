"""The training dataset: window and crops, label/report/evidence joins, splits, pairing, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctclip.data.builder import build_datasets
from ctclip.data.dataset import collate
from ctclip.data.sampling import StepSampler, paired_plan, patient_fraction_split, select_split
from ctclip.data.text import load_evidence, load_labels, report_text, volume_key
from ctclip.data.transforms import (
    Window,
    WindowStack,
    crop_start,
    pad_to,
    parse_window,
    recipe_crop,
    recipe_window,
    window_batch,
)
from llm_labeling.schema import FINDINGS
from tests.ctclip.training_data import CROP_ZYX, make_cohort


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp('cohort'), n_train=12, n_valid=4)


def fake_tokenize(texts, length):
    ids = np.zeros((len(texts), length), np.int64)
    for r, t in enumerate(texts):
        codes = [ord(c) % 1000 + 1 for c in t][:length]
        ids[r, : len(codes)] = codes
    return ids, (ids > 0).astype(np.int64)


def test_window_maps_hu_to_range_and_rejects_bad_bounds():
    w = Window(-1000, 200)
    out = w(np.array([-2000, -1000, -400, 200, 3000], np.int16))
    np.testing.assert_allclose(out, [-1, -1, 0, 1, 1])
    assert (
        Window.parse({'hu_min': -1000, 'hu_max': 1000, 'out_min': 0, 'out_max': 1})(np.array([0]))[
            0
        ]
        == 0.5
    )
    with pytest.raises(ValueError, match='greater than'):
        Window(200, -1000)
    with pytest.raises(ValueError, match='Window must be'):
        Window.parse('soft tissue')


def test_a_list_of_windows_becomes_one_channel_each():
    stack = parse_window([[-1000, 200], [-160, 240]])
    assert isinstance(stack, WindowStack) and stack.channels == 2
    out = stack(np.array([[-1000, -160, 40, 240]], np.int16))
    assert out.shape == (2, 1, 4)
    np.testing.assert_allclose(out[0, 0], [-1, 0.4, 0.7333, 1], atol=1e-3)
    np.testing.assert_allclose(out[1, 0], [-1, -1, 0, 1])
    assert stack.pad_value_hu == -1000
    assert parse_window(stack.spec).spec == stack.spec  # what a model config stores reads back
    assert isinstance(parse_window([[-1000, 200]]), Window)
    assert parse_window([-1000, 200]).channels == 1
    with pytest.raises(ValueError, match='greater than'):
        parse_window([[-1000, 200], [240, -160]])


def test_a_window_stack_gives_multi_channel_crops(cohort):
    stack = [[-1000, 200], [-160, 240]]
    train, val = build_datasets({**cohort, 'window': stack}, None, seed=0)
    single, _ = build_datasets(cohort, None, seed=0)
    rng = np.random.default_rng(3)
    hu = val.image(0, None)  # int16 HU, one channel: the model makes the two
    assert hu.shape == (1, *CROP_ZYX) and hu.dtype == torch.int16
    assert torch.equal(train.image(0, None), single.image(0, None))  # the window is the model's
    x = window_batch(val.window, hu[None])[0]
    assert x.shape == (2, *CROP_ZYX) and x.dtype == torch.float32
    # on the device, bit for bit the host's float32 window of the same crop
    np.testing.assert_array_equal(x.numpy(), val.window(hu[0].numpy()))
    assert train.window.spec == [[-1000.0, 200.0, -1.0, 1.0], [-160.0, 240.0, -1.0, 1.0]]
    assert train.image(1, rng).shape == (1, *CROP_ZYX)
    with pytest.raises(ValueError, match=r'must be \[B, 1, D, H, W\]'):
        window_batch(val.window, x[None])


def test_recipe_window_and_crop_from_cache_recipe():
    recipe = {
        'window_hu': [-1000, 200],
        'window_out': [-1, 1],
        'train_crop_zyx': [48, 96, 96],
        'shape_zyx': [56, 112, 112],
    }
    assert recipe_crop(recipe) == (48, 96, 96)
    assert recipe_crop({'shape_zyx': [56, 112, 112]}) == (56, 112, 112)
    assert recipe_window(recipe).hu_max == 200


def test_crops_are_centred_or_random_and_padding_uses_air():
    assert crop_start((56, 112, 112), (48, 96, 96), None) == (4, 8, 8)
    starts = {crop_start((56, 112, 112), (48, 96, 96), np.random.default_rng(s)) for s in range(20)}
    assert len(starts) > 1 and all(0 <= a <= 8 and 0 <= b <= 16 for a, b, _ in starts)
    assert crop_start((10, 10, 10), (16, 8, 8), None)[0] == 0
    padded = pad_to(np.zeros((10, 8, 8)), (16, 8, 8), -1000)
    assert padded.shape == (16, 8, 8) and padded[0, 0, 0] == -1000 and padded[8, 0, 0] == 0


def test_report_text_and_volume_keys():
    assert report_text('Emphysema.', 'Not given.') == 'Emphysema.'
    assert report_text('', 'Normal.') == 'Normal.'
    assert volume_key('train_1_a_1.nii.gz') == volume_key('train_1_a_1') == 'train_1_a_1'


def test_labels_csv_errors_name_the_file_and_problem(tmp_path):
    path = tmp_path / 'labels.csv'
    path.write_text('report_id,Emphysema\nx,1\n', encoding='utf-8')
    with pytest.raises(ValueError, match='must have columns'):
        load_labels(path)
    path.write_text(
        'report_id,' + ','.join(FINDINGS) + '\nx.nii.gz,' + ','.join(['2'] + ['0'] * 17) + '\n',
        encoding='utf-8',
    )
    with pytest.raises(ValueError, match="must be 1, 0 or -1, not '2'"):
        load_labels(path)
    path.write_text(
        'report_id,' + ','.join(FINDINGS) + '\nx.nii.gz,' + ','.join([''] + ['1'] * 17) + '\n',
        encoding='utf-8',
    )
    labels = load_labels(path)['x']
    assert labels[0] == -1 and labels[1] == 1


def test_evidence_keeps_quoted_findings_of_the_chosen_statuses(cohort):
    evidence = load_evidence(cohort['evidence'])
    assert all(text.split(':')[0] in FINDINGS for items in evidence.values() for _, text in items)
    everything = load_evidence(cohort['evidence'], ('present', 'absent'))
    assert sum(map(len, everything.values())) > sum(map(len, evidence.values()))
    with pytest.raises(ValueError, match='statuses must be among'):
        load_evidence(cohort['evidence'], ('positive',))


def test_patient_split_and_pairing_plan_are_by_patient():
    patients = ['p1', 'p1', 'p2', 'p3', 'p4', 'p4']
    with pytest.raises(ValueError, match="Patients \\['p1'\\]"):
        select_split(['train', 'valid', 'train', 'train', 'valid', 'valid'], patients, 'train')
    plan = paired_plan(patients, 0.5, seed=0)
    assert plan[0] == plan[1] and plan[4] == plan[5] and plan.sum() in (3, 4)
    assert paired_plan(patients, 1.0, 0).all()
    held = patient_fraction_split(patients, 0.5, seed=1)
    assert held[0] == held[1] and held[4] == held[5]
    with pytest.raises(ValueError, match='paired_fraction must be in'):
        paired_plan(patients, 1.5, 0)


def test_step_sampler_one_rank_with_accumulation_equals_two_ranks():
    one = list(StepSampler(20, 2, world_size=1, grad_accum=2, seed=3, total_steps=7))
    r0 = list(StepSampler(20, 2, world_size=2, rank=0, seed=3, total_steps=7))
    r1 = list(StepSampler(20, 2, world_size=2, rank=1, seed=3, total_steps=7))
    assert one[0::2] == r0 and one[1::2] == r1
    assert {e for batch in one for e, _ in batch} == {0, 1}  # 5 steps per epoch: step 6 is epoch 1
    resumed = list(
        StepSampler(20, 2, world_size=1, grad_accum=2, seed=3, total_steps=7, start_step=4)
    )
    assert resumed == one[8:]
    with pytest.raises(ValueError, match='at least one global batch'):
        StepSampler(3, 2, world_size=2)


def test_dataset_rows_follow_the_batch_contract(cohort):
    cfg = {
        'cache': str(cohort['cache']),
        'labels': str(cohort['labels']),
        'reports': str(cohort['reports']),
        'evidence': str(cohort['evidence']),
        'paired_fraction': 0.5,
        'max_length': 40,
        'max_evidence': 4,
        'evidence_length': 16,
    }
    train, val = build_datasets(cfg, fake_tokenize, seed=0)
    assert len(train) == 12 and len(val) == 4 and train.crop == CROP_ZYX
    batch = collate([train[(0, i)] for i in range(len(train))])
    assert batch['image'].shape == (12, 1, *CROP_ZYX) and batch['image'].dtype == torch.int16
    assert batch['image'].min() >= -1024 and batch['image'].max() > 0  # HU, not windowed
    assert batch['input_ids'].shape == (12, 40) and batch['evidence_input_ids'].shape == (12, 4, 16)
    assert batch['image_labels'].shape == batch['text_labels'].shape == (12, 18)
    paired = batch['paired'].numpy()
    assert paired.sum() == train.paired.sum() and 0 < paired.sum() < 12
    unpaired = ~paired
    assert (
        batch['image_labels'][unpaired] == -1
    ).all()  # no report of its own, no pseudo-labels given
    assert not torch.equal(
        batch['text_labels'][unpaired], torch.from_numpy(train.table.labels[unpaired])
    )
    assert isinstance(batch['volume_id'], list) and batch['index'].tolist() == list(range(12))
    # the same key gives the same sample; another epoch gives another crop
    assert torch.equal(train[(0, 3)]['image'], train[(0, 3)]['image'])
    assert not torch.equal(train[(0, 3)]['image'], train[(1, 3)]['image'])
    assert torch.equal(val[0]['image'], val[0]['image']) and val[0]['paired']


def test_workers_open_the_cache_lazily_and_load_the_same_batches(cohort):
    cfg = {'cache': str(cohort['cache']), 'labels': str(cohort['labels'])}
    train, _ = build_datasets(cfg, None, seed=0)
    train.image(0, None)  # opens the handle in this process; workers must not inherit it
    sampler = StepSampler(len(train), 4, seed=0, total_steps=3)
    loaded = [
        list(
            torch.utils.data.DataLoader(
                train, batch_sampler=sampler, num_workers=w, collate_fn=collate
            )
        )
        for w in (0, 2)
    ]
    for a, b in zip(*loaded, strict=False):
        assert torch.equal(a['image'], b['image']) and torch.equal(a['index'], b['index'])


def test_missing_paths_and_empty_splits_are_clear_errors(cohort, tmp_path):
    with pytest.raises(ValueError, match='data.cache must name'):
        build_datasets({'labels': 'x'}, None, 0)
    with pytest.raises(ValueError, match="its splits are \\['train', 'valid'\\]"):
        build_datasets(
            {
                'cache': str(cohort['cache']),
                'labels': str(cohort['labels']),
                'train_split': ['trn'],
            },
            None,
            0,
        )
    with pytest.raises(FileNotFoundError, match='labels.csv'):
        build_datasets(
            {'cache': str(cohort['cache']), 'labels': str(tmp_path / 'labels.csv')}, None, 0
        )


def test_a_misspelt_augmentation_names_the_closest():
    from ctclip.data.transforms import build_augment

    with pytest.raises(
        ValueError, match="'data.augment.afine'.*did you mean 'data.augment.affine'"
    ):
        build_augment({'afine': {'degrees': 10}})
    assert build_augment({'noise': {'std': 0.02}, 'flip': False}) is not None
