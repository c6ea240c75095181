"""ctcommon.atomic: an output appears complete or not at all, and stale temporaries go away."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ctcommon import atomic


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith('.'))


def test_a_failing_writer_leaves_the_old_target_and_no_temp(tmp_path):
    target = tmp_path / 'labels.csv'
    target.write_text('old\n')
    with pytest.raises(RuntimeError, match='disk full'):
        with atomic.atomic_open(target) as f:
            f.write('half a ')
            raise RuntimeError('disk full')
    assert target.read_text() == 'old\n'
    assert leftovers(tmp_path) == []


def test_an_os_error_without_a_path_is_given_the_output_path(tmp_path):
    """savefig and friends raise ENOSPC with no file name; the one-line CLI error needs one."""
    import errno

    target = tmp_path / 'curves.png'
    with pytest.raises(OSError) as caught:
        with atomic.atomic_path(target):
            raise OSError(errno.ENOSPC, 'No space left on device')
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert leftovers(tmp_path) == []


def test_a_failed_verify_keeps_the_old_target(tmp_path):
    target = tmp_path / 'metrics.json'
    atomic.write_json(target, {'auroc': 0.8})

    def verify(tmp: Path) -> None:
        raise OSError(f'{tmp}: truncated')

    with pytest.raises(OSError, match='truncated'):
        with atomic.atomic_open(target, verify=verify) as f:
            f.write('{"auroc": 0.9}')
    assert json.loads(target.read_text()) == {'auroc': 0.8}
    assert leftovers(tmp_path) == []


def test_write_json_refuses_what_does_not_read_back(tmp_path):
    target = tmp_path / 'a' / 'b.json'  # missing folders are made
    atomic.write_json(target, {'x': [1, 2]}, sort_keys=True)
    assert target.read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    with pytest.raises(json.JSONDecodeError):
        with atomic.atomic_open(target, verify=atomic.read_json) as f:
            f.write('{"x": [1,')
    assert json.loads(target.read_text()) == {'x': [1, 2]}


def test_a_writer_that_writes_nothing_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match='the writer produced no file'):
        with atomic.atomic_path(tmp_path / 'out.npy'):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / 'model'
    target.mkdir()
    (target / 'old.bin').write_bytes(b'old')
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / 'new.bin').write_bytes(b'new')
    assert sorted(p.name for p in target.iterdir()) == ['new.bin']
    with pytest.raises(ValueError):
        with atomic.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / 'partial.bin').write_bytes(b'x')
            raise ValueError('killed')
    assert sorted(p.name for p in target.iterdir()) == ['new.bin']
    assert leftovers(tmp_path) == []


def _temp_name(target: str, pid: int, host: str | None = None) -> str:
    host = host or socket.gethostname().split('.')[0]
    return f'.{target}.{host}-{pid}-0123abcd.ctclip-tmp'


def test_stale_temps_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        stale = tmp_path / _temp_name('cache.h5', dead.pid)
        running = tmp_path / _temp_name('cache.h5', live.pid)
        other_node = tmp_path / _temp_name('cache.h5', dead.pid, host='another-node')
        stale_dir = tmp_path / _temp_name('model', dead.pid)
        for p in (stale, running, other_node):
            p.write_bytes(b'partial')
        stale_dir.mkdir()
        (stale_dir / 'x').write_bytes(b'partial')
        (tmp_path / 'cache.h5').write_bytes(b'complete')
        removed = atomic.remove_stale_temps(tmp_path)
        assert sorted(removed) == sorted([stale, stale_dir])
        assert running.exists() and other_node.exists()
        assert (tmp_path / 'cache.h5').read_bytes() == b'complete'
    finally:
        live.kill()
        live.wait()
    assert atomic.remove_stale_temps(tmp_path / 'missing') == []


def test_mode_must_write(tmp_path):
    with pytest.raises(ValueError, match='mode must be a write mode'):
        with atomic.atomic_open(tmp_path / 'x', 'r'):
            pass
