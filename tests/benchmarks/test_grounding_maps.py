"""Dense phrase maps: every tower's token grid, and `ground()` mapping a map back onto the source
CT's grid (flipped axis, anisotropic voxels) through a real cache and a real NIfTI file."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from benchmarks.grounding import metrics as M
from ctclip.factory import create_model
from ctclip.grounding import body_mask, threshold_maps
from ctclip.inference import ground
from ctclip.towers.image import build_image_tower
from preprocessing.recipes import get_recipe

RECIPE = get_recipe(
    'small', spacing_zyx=(4.0, 3.0, 3.0), shape_zyx=(32, 64, 64), train_crop_zyx=(32, 48, 48)
)
SHAPE = (40, 90, 100)  # z, y, x of the phantom
BALL_CENTRE = (22, 30, 60)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    m = create_model('resnet3d-tiny-tinybert', vision_cfg={'block_inplanes': [4, 8, 8, 8]}).eval()
    m.config['recipe'] = RECIPE.to_dict()
    return m


def _ball(shape, centre, radius):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    rz, ry, rx = radius
    return ((z - centre[0]) / rz) ** 2 + ((y - centre[1]) / ry) ** 2 + (
        (x - centre[2]) / rx
    ) ** 2 <= 1


@pytest.fixture(scope='module')
def phantom(tmp_path_factory):
    """A body with dark lungs and one dense ball, stored with a flipped y axis."""
    hu = np.full(SHAPE, -1000, np.int16)
    hu[4:36, 12:78, 8:92] = 40
    hu[8:32, 20:70, 14:46] = -850
    hu[8:32, 20:70, 54:86] = -850
    ball = _ball(SHAPE, BALL_CENTRE, (3, 6, 6))
    hu[ball] = 600
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.4, 1.6, 4.0))
    image.SetOrigin((-70.0, 72.0, -80.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    path = tmp_path_factory.mktemp('ct') / 'phantom.nii.gz'
    sitk.WriteImage(image, str(path))
    return path, ball


class BrightnessGrid:
    """Stand-in image grid: token = normalised (t, 1 - t), t the pooled share of dense (> 100 HU)
    input, so the phrase embedding (1, 0) scores the dense ball highest; checks the geometry."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, window=None):
        x = self.model.prepare_image(x, window)  # int16 HU in, as the model's own first op
        dense = ((x[:, :1] - 0.8) / 0.2).clamp(0, 1)  # the [-1000, 200] window: 100 HU -> 0.83
        t = torch.nn.functional.avg_pool3d(dense, 2)
        return torch.nn.functional.normalize(torch.cat([t, 1 - t], 1), dim=1)


def test_every_tower_exposes_its_tokens_as_a_grid():
    x = torch.randn(1, 1, 16, 32, 32)
    towers = {
        'resnet3d': {'arch': 'resnet3d', 'block_inplanes': [4, 8, 8, 8], 'pool': 'avgmax'},
        'vit3d': {
            'arch': 'vit3d',
            'img_size': [16, 32, 32],
            'patch_size': [8, 8, 16],
            'hidden_size': 12,
            'mlp_dim': 24,
            'num_layers': 1,
            'num_heads': 2,
        },
        'unet3d_encoder': {'arch': 'unet3d_encoder', 'f_maps': [8, 8, 16], 'num_groups': 4},
    }
    for name, cfg in towers.items():
        tower = build_image_tower(cfg).eval()
        with torch.no_grad():
            _, tokens = tower(x)
            grid = tower.forward_grid(x)
        assert grid.shape[:2] == (1, tower.width), name
        assert torch.allclose(grid.flatten(2).transpose(1, 2), tokens, atol=1e-6), name
    # ViT token n is the patch at C-order position n: a change in one patch moves its embedding.
    vit = build_image_tower(towers['vit3d']).eval()
    y = x.clone()
    y[:, :, 8:16, 0:8, 16:32] += 5.0  # patch (1, 0, 1) of a (2, 4, 2) grid
    with torch.no_grad():
        delta = (vit.patch_embedding(y) - vit.patch_embedding(x)).abs().sum(-1)[0]
    assert int(delta.argmax()) == np.ravel_multi_index((1, 0, 1), (2, 4, 2))


def test_model_grid_is_the_projected_image_tokens(model):
    x = torch.randn(1, 1, 32, 48, 48)
    with torch.no_grad():
        grid = model.encode_image_grid(x)
        tokens = model.encode_image(x)['image_tokens']
    assert torch.allclose(grid.flatten(2).transpose(1, 2), tokens, atol=1e-5)
    assert torch.allclose(grid.norm(dim=1), torch.ones(1), atol=1e-5)


def test_ground_puts_the_map_on_the_source_grid(model, phantom, tmp_path, monkeypatch):
    path, ball = phantom
    monkeypatch.setattr(model, 'encode_image_grid', BrightnessGrid(model))
    text = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # 'bright' and 'dark'
    result = ground(model, path, ['bright thing', 'dark thing'], text_embeddings=text)
    assert result.space == 'source' and result.maps.shape == (2, *SHAPE)
    assert M.pointing_hit(ball, result.maps[0])  # the ball, stored y-flipped, is found in place
    assert not M.pointing_hit(ball, result.maps[1])
    mask = result.masks('top_fraction', ball.sum() / result.body.sum())[0]
    assert M.dice(ball, mask) > 0.5
    assert result.body[BALL_CENTRE] and not result.body[0, 0, 0]
    # written with the source affine: the map lies over the CT in nibabel and in SimpleITK
    result.save(tmp_path / 'maps')
    meta = json.loads((tmp_path / 'maps' / 'phrases.json').read_text())
    assert [p['phrase'] for p in meta['phrases']] == ['bright thing', 'dark thing']
    ct = nib.load(str(path))
    saved = nib.load(str(tmp_path / 'maps' / 'map_00.nii.gz'))
    assert saved.shape == ct.shape and np.allclose(saved.affine, ct.affine, atol=1e-4)
    assert np.allclose(np.asarray(saved.dataobj).transpose(2, 1, 0), result.maps[0])
    itk = sitk.ReadImage(str(tmp_path / 'maps' / 'mask_00.nii.gz'))
    assert np.array_equal(sitk.GetArrayFromImage(itk) > 0, result.masks()[0])
    assert np.allclose(itk.GetDirection(), (1, 0, 0, 0, -1, 0, 0, 0, 1))


def test_ground_from_a_cache_id_equals_the_file(model, phantom, tmp_path, monkeypatch):
    from preprocessing.cache import CacheWriter
    from preprocessing.pipeline import process_row

    path, _ = phantom
    monkeypatch.setattr(model, 'encode_image_grid', BrightnessGrid(model))
    array, attrs = process_row({'path': str(path)}, RECIPE)
    cache = tmp_path / 'cache.h5'
    with CacheWriter(cache, RECIPE) as writer:
        writer.write('phantom', array, attrs)
    text = np.array([[1.0, 0.0]], np.float32)
    a = ground(model, 'phantom', ['x'], cache=cache, text_embeddings=text)
    b = ground(model, f'{cache}::phantom', ['x'], text_embeddings=text)
    c = ground(model, path, ['x'], text_embeddings=text)
    assert np.array_equal(a.maps, b.maps) and np.allclose(a.maps, c.maps, atol=1e-6)
    on_cache = ground(model, 'phantom', ['x'], cache=cache, space='cache', text_embeddings=text)
    assert on_cache.space == 'cache' and on_cache.maps.shape == (1, *RECIPE.shape_zyx)
    with pytest.raises(KeyError, match="'nope' is not in the cache"):
        ground(model, 'nope', ['x'], cache=cache)


def test_ground_with_the_real_text_tower(model, phantom):
    path, _ = phantom
    result = ground(model, path, ['Lung nodule.', 'Pleural effusion.'], keep_input_maps=True)
    assert result.input_maps.shape == (2, *RECIPE.crop_zyx)
    assert np.all(result.maps >= -1.0 - 1e-5) and np.all(result.maps <= 1.0 + 1e-5)
    assert not np.allclose(result.maps[0], result.maps[1])


def test_threshold_rules():
    maps = np.arange(1000, dtype=np.float32).reshape(1, 10, 10, 10)
    body = np.zeros((10, 10, 10), bool)
    body[:5] = True  # values 0..499
    top = threshold_maps(maps, body, 'top_fraction', 0.1)[0]
    assert top.sum() == 50 and top[body].sum() == 50 and maps[0][top].min() == 450
    frac = threshold_maps(maps, body, 'max_fraction', 0.8)[0]
    assert maps[0][frac].min() >= 0.8 * 499 and not frac[~body].any()
    assert not threshold_maps(np.zeros((1, 10, 10, 10)), body)[0].any()  # a flat map: no mask
    with pytest.raises(ValueError, match="rule must be one of .*not 'otsu'"):
        threshold_maps(maps, body, 'otsu')
    hu = np.full((6, 20, 20), -1000.0)
    hu[:, 2:18, 2:18] = 40
    hu[:, 6:14, 6:14] = -850  # a lung inside the body
    assert body_mask(hu)[3, 10, 10] and not body_mask(hu)[3, 0, 0]


def test_cli_ground(model, phantom, tmp_path, capsys):
    from ctclip.cli import main

    path, _ = phantom
    model.save_pretrained(tmp_path / 'model')
    argv = ['ground', '--model', str(tmp_path / 'model'), '--volume', str(path), '--out']
    assert main([*argv, str(tmp_path / 'out'), '--text', 'Lung nodule.', 'Effusion.']) == 0
    assert 'map_01.nii.gz  mask_01.nii.gz  Effusion.' in capsys.readouterr().out
    mask = nib.load(str(tmp_path / 'out' / 'mask_00.nii.gz'))
    assert mask.shape == nib.load(str(path)).shape
    top = np.asarray(mask.dataobj).transpose(2, 1, 0) > 0
    again = ground(model, path, ['Lung nodule.'])
    heat = nib.load(str(tmp_path / 'out' / 'map_00.nii.gz')).get_fdata().transpose(2, 1, 0)
    assert np.allclose(heat, again.maps[0], atol=1e-6)
    # the default rule: the top 2% of the body's voxels (voxels tied with the cut included)
    assert top.sum() >= round(0.02 * again.body.sum()) and not top[~again.body].any()
    assert heat[top].min() >= heat[again.body & ~top].max()
    assert main([*argv, str(tmp_path / 'o2'), '--text', 'x', 'threshold.rule=otsu']) == 2
    assert (
        "rule must be one of ['top_fraction', 'max_fraction'], not 'otsu'"
        in capsys.readouterr().err
    )
    assert main([*argv, str(tmp_path / 'o3'), '--text', 'x', 'threshold.vale=0.1']) == 2
    assert "Unknown setting 'threshold.vale'" in capsys.readouterr().err


def test_one_pass_sampling_equals_upsample_uncrop_resample(model, phantom):
    """The one-pass map equals the explicit chain: trilinear upsampling to the input grid, the
    inverse crop onto the cache grid, a linear resample onto the source grid."""
    from preprocessing import inverse
    from preprocessing.pipeline import process_row

    path, _ = phantom
    result = ground(model, path, ['Lung nodule.'], keep_input_maps=True)
    _, attrs = process_row({'path': str(path)}, RECIPE)
    on_cache = inverse.input_to_cache(result.input_maps[0], RECIPE.shape_zyx, np.nan)
    chain, _ = inverse.cache_to_source(on_cache, attrs, RECIPE, 'linear', fill=np.nan)
    seen = np.isfinite(chain) & (result.maps[0] > -1)
    assert seen.mean() > 0.5
    assert np.abs(chain[seen] - result.maps[0][seen]).max() < 0.02
    assert np.corrcoef(chain[seen], result.maps[0][seen])[0, 1] > 0.999
