"""Inference API on a tiny exported model and a tiny real HDF5 cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctclip.factory import create_model
from ctclip.inference import (
    classify_volume,
    embed_texts,
    embed_volumes,
    input_window,
    load_model,
    zero_shot_scores,
)
from ctclip.prompts import ZERO_SHOT_TEMPLATES, resolve_templates
from llm_labeling.schema import FINDINGS

CROP = (16, 32, 32)
IDS = ['valid_1_a_1.nii.gz', 'valid_2_a_1.nii.gz', 'valid_3_a_2.nii.gz']


@pytest.fixture(scope='module')
def recipe():
    from preprocessing.recipes import get_recipe

    return get_recipe(
        'small', shape_zyx=(20, 36, 40), spacing_zyx=(6.0, 6.0, 6.0), train_crop_zyx=CROP
    )


@pytest.fixture(scope='module')
def cache_path(tmp_path_factory, recipe):
    from preprocessing.cache import CacheWriter

    path = tmp_path_factory.mktemp('cache') / 'cache.h5'
    rng = np.random.default_rng(0)
    with CacheWriter(path, recipe) as writer:
        for volume_id in IDS:
            array = rng.integers(-1200, 400, size=recipe.shape_zyx).astype(np.int16)
            writer.write(
                volume_id, array, {'spacing_zyx': recipe.spacing_zyx, 'orientation': 'LPS'}
            )
    return path


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    torch.manual_seed(0)
    built = create_model('resnet3d-tiny-tinybert', vision_cfg={'block_inplanes': [4, 8, 8, 8]})
    folder = tmp_path_factory.mktemp('model') / 'final'
    built.save_pretrained(folder)
    return load_model(folder)


def _manual_embedding(model, cache_path, volume_id, windows) -> np.ndarray:
    """Centre crop by hand, one [-1, 1] channel per (lo, hi) HU window, then the image tower."""
    import h5py
    import hdf5plugin  # noqa: F401

    with h5py.File(cache_path, 'r') as f:
        hu = f['volumes'][volume_id][()]
    start = [(s - c) // 2 for s, c in zip(hu.shape, CROP, strict=True)]
    crop = hu[tuple(slice(a, a + c) for a, c in zip(start, CROP, strict=True))].astype(np.float32)
    x = np.stack([(np.clip(crop, lo, hi) - lo) / (hi - lo) * 2 - 1 for lo, hi in windows])
    with torch.no_grad():
        return model(image=torch.from_numpy(x)[None])['image_features'][0].numpy()


def test_load_model_is_in_eval_mode(model):
    assert not model.training


def test_embed_volumes_windows_and_centre_crops_like_the_recipe(model, cache_path, recipe):
    emb = embed_volumes(model, cache_path, IDS[::-1], batch_size=2, progress=False)
    assert emb.shape == (3, model.config['embed_dim']) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for row, volume_id in enumerate(IDS[::-1]):
        np.testing.assert_allclose(
            emb[row], _manual_embedding(model, cache_path, volume_id, [recipe.window_hu]), atol=1e-5
        )


def test_embed_volumes_does_not_depend_on_batch_size(model, cache_path):
    from preprocessing.cache import open_cache

    cache = open_cache(cache_path)
    a = embed_volumes(model, cache, None, batch_size=1, progress=False)
    b = embed_volumes(model, cache, IDS, batch_size=4, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_embed_volumes_rejects_unknown_ids(model, cache_path):
    with pytest.raises(KeyError, match='not in the cache'):
        embed_volumes(model, cache_path, ['valid_9_a_1.nii.gz'], progress=False)


def test_embed_texts_is_normalised_and_batch_independent(model):
    texts = ['Emphysema is present.', 'No pleural effusion.', 'Cardiomegaly.']
    a = embed_texts(model, texts, batch_size=1)
    b = embed_texts(model, texts)
    assert a.shape == (3, model.config['embed_dim'])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(TypeError):
        embed_texts(model, 'Emphysema.')


def test_zero_shot_scores_are_the_two_way_softmax(model):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(4, model.config['embed_dim'])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    classes = ['Emphysema', 'Lung nodule']
    scores = zero_shot_scores(model, emb, classes)
    pos = embed_texts(model, [f'{c} is present.' for c in classes])
    neg = embed_texts(model, [f'{c} is not present.' for c in classes])
    scale = model.logit_scale.exp().item()
    logits = np.stack([scale * emb @ pos.T, scale * emb @ neg.T], axis=-1)
    expected = np.exp(logits[..., 0]) / np.exp(logits).sum(-1)
    assert scores.shape == (4, 2)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


def test_zero_shot_templates_by_name_and_ensembles(model):
    emb = embed_texts(model, ['There is emphysema.'])
    by_name = zero_shot_scores(model, emb, ['Emphysema'], templates='there-is')
    by_pair = zero_shot_scores(model, emb, ['Emphysema'], templates=ZERO_SHOT_TEMPLATES['there-is'])
    np.testing.assert_allclose(by_name, by_pair)
    both = ['ctclip', ('There is {c}.', 'There is no {c}.')]
    for ensemble in ('embedding', 'probability'):
        scores = zero_shot_scores(model, emb, ['Emphysema'], templates=both, ensemble=ensemble)
        assert 0.0 < scores[0, 0] < 1.0
    single = [
        zero_shot_scores(model, emb, ['Emphysema'], templates=t)[0, 0]
        for t in ('ctclip', 'there-is')
    ]
    averaged = zero_shot_scores(model, emb, ['Emphysema'], templates=both, ensemble='probability')[
        0, 0
    ]
    assert averaged == pytest.approx(np.mean(single), rel=1e-5)


def test_bad_templates_and_embeddings_fail_clearly(model):
    with pytest.raises(ValueError, match="Unknown template set 'nope'"):
        resolve_templates('nope')
    with pytest.raises(ValueError, match='templates must be'):
        resolve_templates(('{c} yes', 'missing placeholder'))
    with pytest.raises(ValueError, match=r'image_emb must be \[N, 64\]'):
        zero_shot_scores(model, np.zeros((2, 3), np.float32), ['Emphysema'])
    with pytest.raises(ValueError, match='ensemble must be one of'):
        zero_shot_scores(model, np.zeros((1, 64), np.float32), ['Emphysema'], ensemble='vote')


def test_classify_volume_from_an_array_on_the_recipe_grid(model, cache_path, recipe):
    from preprocessing.cache import open_cache

    hu = open_cache(cache_path).read(IDS[0]).array
    scores = classify_volume(model, hu, recipe=recipe)
    assert list(scores) == list(FINDINGS)
    emb = embed_volumes(model, cache_path, IDS[:1], progress=False)
    np.testing.assert_allclose(list(scores.values()), zero_shot_scores(model, emb)[0], rtol=1e-4)


def test_classify_volume_from_a_nifti_file(model, recipe, tmp_path):
    import SimpleITK as sitk

    array = np.full((30, 50, 50), -1000, np.int16)
    array[5:25, 10:40, 10:40] = 40  # a body, so the body-centred crop has something to centre on
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    path = tmp_path / 'scan.nii.gz'
    sitk.WriteImage(image, str(path))
    scores = classify_volume(model, path, class_names=['Emphysema', 'Cardiomegaly'], recipe=recipe)
    assert set(scores) == {'Emphysema', 'Cardiomegaly'}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    with pytest.raises(ValueError, match='3D'):
        classify_volume(model, np.zeros((4, 4)), recipe=recipe)


def test_classify_volume_uses_the_recipe_saved_with_the_model(model, cache_path, recipe, tmp_path):
    from preprocessing.cache import open_cache

    model.config['recipe'] = recipe.to_dict()
    try:
        model.save_pretrained(tmp_path / 'with-recipe')
    finally:
        del model.config['recipe']
    reloaded = load_model(tmp_path / 'with-recipe')
    assert reloaded.config['recipe']['train_crop_zyx'] == list(CROP)
    hu = open_cache(cache_path).read(IDS[1]).array
    assert classify_volume(reloaded, hu) == pytest.approx(
        classify_volume(model, hu, recipe=recipe), rel=1e-5
    )


def test_a_model_sees_the_windows_it_was_trained_with(cache_path, recipe, tmp_path):
    torch.manual_seed(0)
    built = create_model(
        'resnet3d-tiny-tinybert', vision_cfg={'block_inplanes': [4, 8, 8, 8], 'in_chans': 2}
    )
    built.config['window'] = [[-1000, 200, -1, 1], [-160, 240, -1, 1]]
    built.save_pretrained(tmp_path / 'two-windows')
    model = load_model(tmp_path / 'two-windows')
    assert input_window(model).channels == 2
    emb = embed_volumes(model, cache_path, IDS[:1], progress=False)
    manual = _manual_embedding(model, cache_path, IDS[0], [(-1000, 200), (-160, 240)])
    np.testing.assert_allclose(emb[0], manual, atol=1e-5)
    hu_grid = np.zeros(recipe.shape_zyx, np.int16)
    assert set(classify_volume(model, hu_grid, ['Emphysema'], recipe=recipe)) == {'Emphysema'}


def test_a_window_that_does_not_fit_the_tower_fails_clearly(model):
    with pytest.raises(ValueError, match='1 input channel.*gives 2'):
        input_window(model, [[-1000, 200], [-160, 240]])
    assert input_window(model, [-1000, 200]).channels == 1
