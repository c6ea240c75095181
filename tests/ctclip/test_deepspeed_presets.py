"""The default DeepSpeed settings need no file; presets are packaged JSON; a path still works."""

from __future__ import annotations

import json

import pytest

import ctclip.config
from ctclip.config import configs_dir
from ctclip.training.deepspeed_config import (
    DEFAULT_DEEPSPEED,
    deepspeed_config,
    deepspeed_presets,
    load_deepspeed_json,
)
from ctclip.training.settings import DeepSpeedCfg, train_config


def test_default_is_a_dict_equal_to_the_zero0_preset():
    assert DeepSpeedCfg().config is None
    assert load_deepspeed_json(None) == DEFAULT_DEEPSPEED
    zero0 = json.loads((configs_dir() / 'deepspeed' / 'zero0.json').read_text(encoding='utf-8'))
    assert load_deepspeed_json('zero0') == zero0 == DEFAULT_DEEPSPEED
    first = load_deepspeed_json(None)
    first['zero_optimization']['stage'] = 3  # a caller's edit must not leak into the default
    assert load_deepspeed_json(None)['zero_optimization'] == {'stage': 0}


def test_the_default_reads_no_file(monkeypatch, tmp_path):
    """With no packaged configs at all, a run that names no DeepSpeed JSON still gets its settings."""
    empty = tmp_path / 'configs'
    (empty / 'deepspeed').mkdir(parents=True)
    monkeypatch.setattr(ctclip.config, '_packaged_root', lambda: empty)
    cfg = train_config({'data': {'batch_size': 2}, 'train': {'grad_accum': 3}})
    out = deepspeed_config(cfg, world_size=2)
    assert out['zero_optimization'] == {'stage': 0}
    assert out['train_batch_size'] == 12
    with pytest.raises(FileNotFoundError, match='must be a JSON file or one of'):
        load_deepspeed_json('zero2')  # presets do come from the package


def test_presets_by_name_and_files_by_path(tmp_path):
    assert deepspeed_presets() == ['zero0', 'zero1', 'zero2', 'zero2-bf16', 'zero3']
    for name in deepspeed_presets():
        on_disk = json.loads((configs_dir() / 'deepspeed' / f'{name}.json').read_text())
        assert load_deepspeed_json(name) == on_disk
        assert load_deepspeed_json(f'{name}.json') == on_disk
    assert load_deepspeed_json('configs/deepspeed/zero2.json')['zero_optimization']['stage'] == 2
    mine = tmp_path / 'mine.json'
    mine.write_text('{"zero_optimization": {"stage": 1}, "optimizer": {"params": {"eps": 1e-8}}}')
    loaded = load_deepspeed_json(str(mine))
    assert loaded['zero_optimization'] == {'stage': 1}
    assert loaded['optimizer']['params']['eps'] == 1e-8
    given = {'zero_optimization': {'stage': 2}}
    assert load_deepspeed_json(given) == given and load_deepspeed_json(given) is not given


def test_an_unknown_name_lists_the_presets_closest_first():
    with pytest.raises(FileNotFoundError) as err:
        load_deepspeed_json('zero2-bf61')
    msg = str(err.value)
    assert "not 'zero2-bf61'" in msg and '\n' not in msg
    assert msg.split('one of ')[1].startswith('zero2-bf16, ')
