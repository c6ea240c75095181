"""`python -m benchmarks.perf` writes its table only where it is told, never beside the package."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import benchmarks.perf
from benchmarks.perf import __main__ as perf
from benchmarks.perf.common import Row


@pytest.fixture
def areas(monkeypatch):
    """Two fast areas (one takes a CT sample, one does not) and a broken one, as real modules."""
    seen: dict = {}

    def plain(quick: bool) -> list[Row]:
        seen['plain'] = quick
        return [Row('plain', 'one thing', 2.0, 's', 4.0, 'theirs', 2.0, '>= 1x', 1.0)]

    def sampled(quick: bool = False, ct_sample: Path | None = None) -> list[Row]:
        seen['sampled'] = ct_sample
        return [Row('sampled', 'other thing', 1.0, 's')]

    def broken(quick: bool) -> list[Row]:
        raise RuntimeError('no such device')

    for name, fn in (('plain', plain), ('sampled', sampled), ('broken', broken)):
        module = types.ModuleType(f'_perf_area_{name}')
        module.run = fn
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(
        perf, 'AREAS', {n: f'_perf_area_{n}' for n in ('plain', 'sampled', 'broken')}
    )
    return seen


def _package_files() -> dict[str, float]:
    folder = Path(benchmarks.perf.__file__).parent
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def test_without_results_nothing_is_written(areas, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = _package_files()
    assert perf.main(['--only', 'plain']) == 0
    assert '| plain | one thing | 2 s | 4 s (theirs) | 2 | >= 1x | yes |' in capsys.readouterr().out
    assert _package_files() == before
    assert list(tmp_path.iterdir()) == []


def test_results_file_is_rewritten_and_keeps_its_gpu_section(areas, tmp_path):
    results = tmp_path / 'R.md'
    results.write_text(f'old table\n{perf.GPU_SECTION_MARK}\n## GPU\n\nH100: 1.0 step/s\n')
    sample = tmp_path / 'ct.nii.gz'
    sample.write_bytes(b'not read by the fake area')
    args = ['--only', 'plain', 'sampled', '--results', str(results), '--ct-sample', str(sample)]
    assert perf.main(args) == 0
    text = results.read_text()
    assert 'old table' not in text and '| sampled | other thing |' in text
    assert text.endswith(f'{perf.GPU_SECTION_MARK}\n## GPU\n\nH100: 1.0 step/s\n')
    assert areas == {'plain': False, 'sampled': sample}  # only the area that takes it gets it
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_a_failed_area_is_named_and_fails_the_run(areas, tmp_path):
    results = tmp_path / 'R.md'
    assert perf.main(['--only', 'broken', 'plain', '--results', str(results)]) == 1
    assert 'Failed areas: broken' in results.read_text()


def test_bad_flags_fail_before_any_work(areas, tmp_path, capsys):
    with pytest.raises(SystemExit):
        perf.main(['--only', 'plain', '--quick', '--results', str(tmp_path / 'R.md')])
    assert '--results must not be combined with --quick' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        perf.main(['--only', 'sampled', '--ct-sample', str(tmp_path / 'missing.nii.gz')])
    assert '--ct-sample must be an existing file' in capsys.readouterr().err
    assert areas == {} and not (tmp_path / 'R.md').exists()
