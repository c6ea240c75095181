"""The model registry: names, user configs, overrides and the errors a user sees."""

from __future__ import annotations

import json

import pytest

from ctclip.factory import (
    add_model_config,
    apply_overrides,
    create_model,
    get_model_config,
    list_models,
)

TINY = {'vision_cfg': {'block_inplanes': [4, 8, 8, 8]}}


def test_builtin_models_are_listed():
    names = list_models()
    for name in (
        'resnet3d-tiny-minilm',
        'resnet3d-tiny-tinybert',
        'resnet3d-18-cxrbert',
        'resnet3d-34-cxrbert',
        'resnet3d-50-cxrbert',
        'vit3d-s-cxrbert',
        'vit3d-b-cxrbert',
        'unet3d-enc-cxrbert',
    ):
        assert name in names
    assert names == sorted(names)


def test_every_builtin_config_passes_validation():
    from ctclip.model import _normalize_config

    for name in list_models():
        config = _normalize_config(get_model_config(name))
        assert config['embed_dim'] > 0, name


def test_unknown_model_names_the_available_ones():
    with pytest.raises(
        ValueError, match="Unknown model 'resnet3d-19'. Available: .*resnet3d-18-cxrbert"
    ):
        create_model('resnet3d-19')


def test_nested_and_dotted_overrides_merge_deeply():
    config = get_model_config('resnet3d-tiny-tinybert')
    out = apply_overrides(
        config, {'vision_cfg': {'layers': [2, 1, 1, 1]}, 'text_cfg.width': 32, 'embed_dim': 16}
    )
    assert out['vision_cfg']['layers'] == [2, 1, 1, 1]
    assert out['vision_cfg']['block_inplanes'] == [8, 16, 32, 64]  # untouched sibling survives
    assert out['text_cfg']['width'] == 32 and out['embed_dim'] == 16
    with pytest.raises(ValueError, match="'embed_dim' is a value, not a section"):
        apply_overrides(out, {'embed_dim.x': 1})


def test_get_model_config_returns_a_copy():
    get_model_config('resnet3d-tiny-tinybert')['vision_cfg']['layers'] = [9, 9, 9, 9]
    assert get_model_config('resnet3d-tiny-tinybert')['vision_cfg']['layers'] == [1, 1, 1, 1]


def test_add_model_config_registers_a_user_file(tmp_path):
    config = get_model_config('resnet3d-tiny-tinybert')
    config['embed_dim'] = 24
    path = tmp_path / 'my-model.json'
    path.write_text(json.dumps(config), encoding='utf-8')
    assert add_model_config(path) == ['my-model']
    model = create_model('my-model', **TINY)
    assert model.image_proj.out_features == 24
    assert model.config['name'] == 'my-model'


def test_add_model_config_rejects_bad_files(tmp_path):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"embed_dim": 8,', encoding='utf-8')
    with pytest.raises(ValueError, match='bad.json is not valid JSON'):
        add_model_config(bad)
    bad.write_text('{"embed_dim": 8}', encoding='utf-8')
    with pytest.raises(
        ValueError, match='must be a JSON object with embed_dim, vision_cfg and text_cfg'
    ):
        add_model_config(bad)
    with pytest.raises(FileNotFoundError):
        add_model_config(tmp_path / 'missing.json')


def test_bad_config_values_fail_at_build_time_with_valid_choices():
    with pytest.raises(
        ValueError, match=r"Unknown setting 'vision_cfg.widht'.*Valid keys: block, "
    ):
        create_model('resnet3d-tiny-tinybert', vision_cfg={'widht': 3})
    with pytest.raises(ValueError, match="vision_cfg.arch must be one of .*'resnet3d'"):
        create_model('resnet3d-tiny-tinybert', vision_cfg={'arch': 'resnet2d'})
    with pytest.raises(
        ValueError, match="text_cfg.pooling must be one of \\['cls', 'mean'\\], not 'max'"
    ):
        create_model('resnet3d-tiny-tinybert', text_cfg={'pooling': 'max'})
    with pytest.raises(ValueError, match='head_cfg.type must be one of'):
        create_model('resnet3d-tiny-tinybert', head_cfg={'type': 'both'})
    with pytest.raises(ValueError, match='embed_dim must be a positive integer'):
        create_model('resnet3d-tiny-tinybert', embed_dim=0)
    with pytest.raises(ValueError, match="Unknown setting 'embedding'.*did you mean 'embed_dim'"):
        create_model('resnet3d-tiny-tinybert', embedding=3)
