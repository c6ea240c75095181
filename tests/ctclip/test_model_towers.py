"""The image towers: GreenRFM stem, ResNet depths, 3D ViT, pytorch-3dunet encoder."""

from __future__ import annotations

import pytest
import torch

from ctclip.factory import create_model
from ctclip.towers.image import ResNet3dTower, UNet3dEncoderTower, ViT3dTower, build_image_tower

X = torch.randn(2, 1, 16, 32, 32)


def test_resnet_stem_is_one_channel_stride_two_by_default():
    tower = ResNet3dTower(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 8))
    conv = tower.stem[0]
    assert conv.in_channels == 1 and conv.stride == (2, 2, 2) and conv.kernel_size == (7, 7, 7)
    pooled, tokens = tower(X)
    # stride-2 stem, max-pool and three stride-2 stages: 16x32x32 -> 1x1x1
    assert pooled.shape == (2, 8) and tokens.shape == (2, 1, 8)
    assert torch.allclose(tokens.mean(1), pooled)


def test_resnet_stem_stride_and_widths_are_configurable():
    tower = ResNet3dTower(
        layers=(1, 1, 1, 1), block_inplanes=(2, 4, 4, 6), stem_stride=1, no_max_pool=True
    )
    assert tower.stem[0].stride == (1, 1, 1)
    pooled, tokens = tower(X)
    assert pooled.shape == (2, 6) and tokens.shape == (2, 2 * 4 * 4, 6)


@pytest.mark.parametrize('block', ['basic', 'bottleneck'])
def test_resnet_stage_strides_give_a_finer_token_grid(block):
    x = torch.randn(2, 1, 32, 64, 64)
    kwargs = dict(layers=(1, 1, 1, 1), block_inplanes=(2, 4, 4, 6), block=block)
    default = ResNet3dTower(**kwargs).forward_grid(x)
    finer = ResNet3dTower(**kwargs, stage_strides=(1, 2, 2, 1)).forward_grid(x)
    finest = ResNet3dTower(**kwargs, stage_strides=(1, 2, 1, 1)).forward_grid(x)
    assert default.shape[2:] == (1, 2, 2)
    assert finer.shape[2:] == (2, 4, 4) and finest.shape[2:] == (4, 8, 8)
    assert finer.shape[:2] == default.shape[:2]


@pytest.mark.parametrize('strides', [(2, 2, 2, 2), (1, 2, 3, 2), (1, 2, 2)])
def test_resnet_stage_strides_are_validated(strides):
    with pytest.raises(ValueError, match='stage_strides must be 4 strides of 1 or 2'):
        ResNet3dTower(layers=(1, 1, 1, 1), block_inplanes=(2, 4, 4, 6), stage_strides=strides)


def test_resnet_stage_strides_need_a_module_shortcut():
    with pytest.raises(ValueError, match="need shortcut_type 'B', not 'A'"):
        ResNet3dTower(
            layers=(1, 1, 1, 1),
            block_inplanes=(2, 4, 4, 6),
            shortcut_type='A',
            stage_strides=(1, 2, 2, 1),
        )


def test_resnet50_config_uses_bottleneck_blocks():
    model = create_model(
        'resnet3d-50-cxrbert',
        vision_cfg={'block_inplanes': [2, 4, 4, 4]},
        text_cfg={'source': 'random', 'width': 16, 'layers': 1, 'heads': 2},
    )
    assert model.visual.width == 16  # 4 * expansion 4
    assert [len(stage) for stage in model.visual.stages] == [3, 4, 6, 3]
    assert model(image=X)['image_features'].shape == (2, 512)


def test_resnet_rejects_wrong_stage_counts():
    with pytest.raises(ValueError, match='must have 4 entries'):
        ResNet3dTower(layers=(1, 1, 1), block_inplanes=(4, 8, 8, 8))


def test_vit_tokens_are_the_patches():
    tower = ViT3dTower(
        img_size=(16, 32, 32),
        patch_size=(8, 16, 16),
        hidden_size=24,
        mlp_dim=48,
        num_layers=2,
        num_heads=2,
    )
    pooled, tokens = tower(X)
    assert tokens.shape == (2, 2 * 2 * 2, 24) and pooled.shape == (2, 24)
    with pytest.raises(ValueError, match=r'ViT input must be \[16, 32, 32\]'):
        tower(torch.zeros(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match='must be divisible by patch_size'):
        ViT3dTower(img_size=(16, 32, 30), patch_size=(8, 16, 16))


def test_vit_config_builds_through_the_factory():
    vision = {
        'img_size': [16, 32, 32],
        'patch_size': [8, 16, 16],
        'hidden_size': 24,
        'mlp_dim': 48,
        'num_layers': 1,
        'num_heads': 2,
    }
    model = create_model(
        'vit3d-s-cxrbert',
        vision_cfg=vision,
        text_cfg={'source': 'random', 'width': 16, 'layers': 1, 'heads': 2},
    )
    out = model(image=X)
    assert out['image_tokens'].shape == (2, 8, 512)


def test_unet_encoder_tower_uses_pytorch3dunet_blocks():
    from pytorch3dunet.unet3d.buildingblocks import Encoder

    tower = UNet3dEncoderTower(f_maps=(4, 8, 16), num_groups=2)
    assert all(isinstance(e, Encoder) for e in tower.encoders)
    pooled, tokens = tower(X)
    # stem /2, then two pooled levels /4: 16x32x32 -> 2x4x4
    assert pooled.shape == (2, 16) and tokens.shape == (2, 2 * 4 * 4, 16)
    with pytest.raises(ValueError, match='basic_module must be one of'):
        UNet3dEncoderTower(basic_module='unknown')


def test_tower_grad_checkpointing_matches_plain_backward():
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        tower = build_image_tower({'arch': 'unet3d_encoder', 'f_maps': [4, 8], 'num_groups': 2})
        tower.set_grad_checkpointing(enable)
        tower(X)[0].square().sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in tower.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize('pool', ['avg', 'max', 'avgmax'])
def test_resnet_pooling_widths_and_values(pool):
    from ctclip.towers.image import ResNet3dTower

    tower = ResNet3dTower(
        layers=(1, 1, 1, 1), block_inplanes=(4, 4, 8, 8), stem_kernel=3, pool=pool
    )
    x = torch.randn(2, 1, 16, 32, 32)
    pooled, tokens = tower.eval()(x)
    assert pooled.shape == (2, tower.width)
    assert tokens.shape[-1] == tower.width, 'tokens must live in the pooled space (one projection)'
    grid = tokens[..., :8]
    expected = {
        'avg': grid.mean(1),
        'max': grid.amax(1),
        'avgmax': torch.cat([grid.mean(1), grid.amax(1)], 1),
    }
    assert torch.allclose(pooled, expected[pool])


def test_resnet_rejects_unknown_pooling():
    from ctclip.towers.image import ResNet3dTower

    with pytest.raises(ValueError, match='pool must be one of'):
        ResNet3dTower(pool='mean')
