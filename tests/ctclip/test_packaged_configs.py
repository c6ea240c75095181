"""Run configs ship inside the package and are found by name, so a wheel runs without a clone."""

from __future__ import annotations

import json

import pytest
import yaml

from ctclip.cli import main
from ctclip.config import configs_dir, export_configs, list_configs, load_config, resolve

KINDS = ('bench', 'deepspeed', 'label', 'preprocess', 'train')


def test_every_packaged_config_is_listed_and_loads_by_name():
    names = list_configs()
    assert {n.split('/')[0] for n in names} == set(KINDS)
    assert 'train/stage1-small' in names and 'deepspeed/zero2-bf16' in names
    on_disk = sorted(
        f'{p.parent.name}/{p.stem}'
        for p in configs_dir().glob('*/*')
        if p.suffix in ('.yaml', '.json')
    )
    assert names == on_disk
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, dict) and cfg and 'base' not in cfg, name


def test_name_and_path_forms_give_the_same_config():
    by_path = load_config(configs_dir() / 'train' / 'stage2-evidence-small.yaml')
    for spec in (
        'train/stage2-evidence-small',
        'train/stage2-evidence-small.yaml',
        'configs/train/stage2-evidence-small.yaml',  # the path the docs used before the move
    ):
        assert load_config(spec) == by_path, spec
    # three levels of `base:` are merged in the package as they are on disk
    stage1 = load_config('train/stage1-small')
    assert by_path['model'] != {} and stage1['data'].keys() <= by_path['data'].keys()
    assert load_config('deepspeed/zero2') == json.loads(
        (configs_dir() / 'deepspeed' / 'zero2.json').read_text()
    )


def test_a_miss_is_one_line_listing_that_kinds_choices_closest_first():
    with pytest.raises(FileNotFoundError) as err:
        load_config('train/stage1-smal')
    msg = str(err.value)
    assert '\n' not in msg
    assert "'train/stage1-smal'" in msg
    listed = msg.split(' are: ')[1].split(', ')
    assert listed[0] == 'train/stage1-small'
    assert sorted(listed) == list_configs('train')
    with pytest.raises(FileNotFoundError, match='packaged train configs'):
        load_config('trian/stage1-small')  # a misspelt kind lists the nearest kind
    with pytest.raises(FileNotFoundError, match='nope.yaml'):
        load_config('nope.yaml')
    with pytest.raises(ValueError, match="not 'trian'.*did you mean 'train'"):
        list_configs('trian')


def test_a_local_file_wins_and_its_base_may_be_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / 'mine.yaml'
    mine.write_text('base: train/stage1-small\ntrain:\n  steps: 3\n')
    cfg = load_config(mine)
    packaged = load_config('train/stage1-small')
    assert cfg['train']['steps'] == 3
    assert cfg['model'] == packaged['model']
    (tmp_path / 'train').mkdir()
    (tmp_path / 'train' / 'stage1-small.yaml').write_text('train:\n  steps: 7\n')
    assert load_config('train/stage1-small.yaml') == {'train': {'steps': 7}}  # the file wins
    assert load_config('train/stage1-small') == packaged  # no such file: the packaged name
    bad = tmp_path / 'bad.yaml'
    bad.write_text('base: stage1-smal.yaml\n')
    with pytest.raises(FileNotFoundError, match=r"bad.yaml'?: base Config 'stage1-smal.yaml'"):
        load_config(bad)
    assert resolve({}, 'train/stage1-small', {}, ['train.steps=5'])['train']['steps'] == 5


def test_export_writes_editable_copies_and_refuses_to_overwrite(tmp_path):
    written = export_configs(tmp_path / 'cfg')
    assert sorted(f'{p.parent.name}/{p.stem}' for p in written) == list_configs()
    for path in written:
        rel = path.relative_to(tmp_path / 'cfg')
        assert path.read_bytes() == (configs_dir() / rel).read_bytes()
    # the copies' base: lines resolve beside each other, and an edit is seen
    stage2 = tmp_path / 'cfg' / 'train' / 'stage2-clip-small.yaml'
    assert load_config(stage2) == load_config('train/stage2-clip-small')
    stage1 = tmp_path / 'cfg' / 'train' / 'stage1-small.yaml'
    edited = yaml.safe_load(stage1.read_text())
    edited['train']['steps'] = 1234
    stage1.write_text(yaml.safe_dump(edited))
    assert load_config(stage2)['train']['steps'] == 1234
    with pytest.raises(FileExistsError, match=r'stage1.yaml already exists \(6 of 6.*--force'):
        export_configs(tmp_path / 'cfg', kind='train')
    assert yaml.safe_load(stage1.read_text())['train']['steps'] == 1234  # untouched
    export_configs(tmp_path / 'cfg', kind='train', force=True)
    assert stage1.read_bytes() == (configs_dir() / 'train' / 'stage1-small.yaml').read_bytes()
    assert not list((tmp_path / 'cfg' / 'train').glob('.*'))  # no temporary files left


def test_configs_verb_lists_and_exports(tmp_path, capsys):
    assert main(['configs', 'list', 'train']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_configs('train')
    assert 'small' in next(line for line in lines if line.startswith('train/stage1-small '))
    assert main(['configs', 'export', str(tmp_path / 'out'), '--kind', 'deepspeed']) == 0
    assert sorted(p.name for p in (tmp_path / 'out' / 'deepspeed').iterdir()) == sorted(
        f'{n.split("/")[1]}.json' for n in list_configs('deepspeed')
    )
    with pytest.raises(SystemExit, match='already exists.*--force'):
        main(['configs', 'export', str(tmp_path / 'out'), '--kind', 'deepspeed'])
    assert main(['configs', 'export', str(tmp_path / 'out'), '--kind', 'deepspeed', '--force']) == 0


def test_json_configs_are_read_as_json(tmp_path):
    """YAML 1.1 reads the JSON number 1e-5 as the string '1e-5'; a .json file must not."""
    path = tmp_path / 'ds.json'
    path.write_text('{"optimizer": {"params": {"lr": 1e-5}}}')
    assert load_config(path)['optimizer']['params']['lr'] == 1e-5
    assert yaml.safe_load(path.read_text())['optimizer']['params']['lr'] == '1e-5'
