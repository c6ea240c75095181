"""Item 13 of issue 16: a failure a user can fix is one line `ctclip VERB: PATH: problem`, exit
non-zero; `-v` keeps the traceback. Real file systems (tmpfs, read-only mounts), real HDF5."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctclip.cli import error_line, main
from llm_labeling.schema import FINDINGS
from tests.llm_labeling.helpers import write_ctrate_csv

IDS = [f'valid_{s}_a_{r}.nii.gz' for s in range(3) for r in (1, 2)]


@pytest.fixture
def ctrate_csv(tmp_path: Path) -> Path:
    return write_ctrate_csv(tmp_path / 'reports.csv')


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real tmpfs at `path` (root only: CI runs as root); skip with the reason where refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}')
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=False)


def fill(folder: Path) -> None:
    """Write zeros into `folder` until its file system is full."""
    fd = os.open(folder / 'filler', os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b'\0' * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)


def one_line(capsys) -> str:
    """The error line (a progress bar may share stderr), and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('ctclip ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def label(reports: Path, out: Path, *extra: str) -> list[str]:
    return ['label', '--reports', str(reports), '--out-dir', str(out), '--no-progress', *extra]


# -- label: output paths and full disks ------------------------------------------------------
def test_output_path_that_is_a_file(tmp_path, ctrate_csv, capsys):
    a_file = tmp_path / 'taken.txt'
    a_file.write_text('not a folder', encoding='utf-8')
    assert main(label(ctrate_csv, a_file)) == 1
    assert one_line(capsys) == f'ctclip label: {a_file}: is a file, not a folder'
    assert main(label(ctrate_csv, a_file / 'sub')) == 1
    line = one_line(capsys)
    assert line.startswith(f'ctclip label: {a_file / "sub"}: a part of this path is a file'), line
    assert a_file.read_text(encoding='utf-8') == 'not a folder'


def test_verbose_keeps_the_traceback(tmp_path, ctrate_csv):
    a_file = tmp_path / 'taken.txt'
    a_file.write_text('x', encoding='utf-8')
    with pytest.raises(FileExistsError):
        main([*label(ctrate_csv, a_file), '-v'])


def test_read_only_output_folder(tmp_path, ctrate_csv, capsys):
    with tmpfs(tmp_path / 'ro', 'ro,size=1m') as ro:
        assert main(label(ctrate_csv, ro / 'out')) == 1
        assert one_line(capsys) == f'ctclip label: {ro / "out"}: read-only file system'


def test_full_disk_in_label(tmp_path, ctrate_csv, capsys):
    with tmpfs(tmp_path / 'small', 'size=1m') as small:
        out = small / 'out'
        out.mkdir()
        fill(small)
        assert main(label(ctrate_csv, out)) == 1
        line = one_line(capsys)
        # the file being written when the disk filled, inside the output folder
        assert line.startswith(f'ctclip label: {out}') and 'disk full' in line, line
        assert os.listdir(out) == []  # nothing half-written, no temporary file left behind


def test_full_response_cache_in_label(tmp_path, ctrate_csv, capsys):
    """SQLite says 'database or disk is full': still one line naming the cache."""
    from llm_labeling.fake_server import FakeChatServer

    with tmpfs(tmp_path / 'small', 'size=1m') as small, FakeChatServer() as server:
        out = small / 'out'
        out.mkdir()
        fill(small)
        args = ['--backend', 'openai', '--model', 'm', '--base-url', server.url]
        assert main(label(ctrate_csv, out, *args)) == 1
        line = one_line(capsys)
        assert line.startswith(f'ctclip label: {out / "response_cache.sqlite"}: disk full'), line


def test_missing_extra_names_the_install(tmp_path, ctrate_csv, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'instructor', None)  # as if `ctclip[llm]` were absent
    args = ['--backend', 'openai', '--model', 'm', '--base-url', 'http://127.0.0.1:9/v1']
    assert main(label(ctrate_csv, tmp_path / 'out', *args)) == 1
    line = one_line(capsys)
    assert line.startswith('ctclip label needs the ') and 'ctclip[llm]' in line, line


# -- settings -----------------------------------------------------------------------------------
def test_unknown_and_mistyped_settings_are_one_line():
    from ctcommon.settings import UnknownSettingError, from_mapping
    from llm_labeling.settings import RetryCfg

    with pytest.raises(UnknownSettingError) as unknown:
        from_mapping(RetryCfg, {'max_retris': 6}, 'retry')
    line = error_line(unknown.value, 'label')
    assert line.startswith("ctclip label: Unknown setting 'retry.max_retris' in section 'retry'")
    with pytest.raises(TypeError) as mistyped:
        from_mapping(RetryCfg, 6, 'retry')
    assert (
        error_line(mistyped.value, 'label')
        == "ctclip label: 'retry' must be a mapping, not int (6)"
    )
    assert error_line(TypeError('unsupported operand'), 'train') is None  # a bug: the traceback


def test_unknown_train_setting_is_one_line(capsys):
    assert main(['train', '--config', 'train/stage1-small', 'train.ckpt_evry=10']) == 2
    line = one_line(capsys)
    assert line.startswith("ctclip train: Unknown setting 'train.ckpt_evry' in section 'train'")
    assert "did you mean 'train.ckpt_every'" in line


# -- caches: truncated files and corrupt chunks ------------------------------------------------
@pytest.fixture(scope='module')
def caches(tmp_path_factory):
    """A real cache, a truncated copy, and a copy with one volume's compressed chunk zeroed."""
    import h5py

    from benchmarks.tables import Table, write_table
    from preprocessing.cache import CacheWriter
    from preprocessing.recipes import get_recipe

    root = tmp_path_factory.mktemp('caches')
    recipe = get_recipe('small').replace(
        shape_zyx=(16, 32, 32), train_crop_zyx=None, chunks_zyx=(8, 32, 32)
    )
    rng = np.random.default_rng(0)
    with CacheWriter(root / 'good.h5', recipe) as writer:
        for vid in IDS:
            writer.write(vid, (rng.normal(size=(16, 32, 32)) * 300 - 500).astype(np.int16), {})
    truncated = root / 'truncated.h5'
    shutil.copy(root / 'good.h5', truncated)
    os.truncate(truncated, truncated.stat().st_size // 2)
    corrupt = root / 'corrupt.h5'
    shutil.copy(root / 'good.h5', corrupt)
    with h5py.File(corrupt, 'r') as f:
        info = f['volumes'][IDS[3]].id.get_chunk_info(0)
    with corrupt.open('r+b') as f:
        f.seek(info.byte_offset)
        f.write(b'\0' * info.size)
    labels = rng.integers(0, 2, size=(len(IDS), len(FINDINGS))).astype(float)
    write_table(Table(IDS, list(FINDINGS), labels), root / 'labels.csv')
    return root


def bench(root: Path, cache: Path, model: Path) -> list[str]:
    args = ['bench', 'ct-rate', '--model', str(model), '--data', str(cache)]
    args += ['--labels', str(root / 'labels.csv'), '--out', str(root / f'out_{cache.stem}')]
    return [*args, '--no-plots', '--no-retrieval', '--n-bootstrap', '5']


def test_truncated_cache_in_bench_names_the_file(caches, capsys):
    assert main(bench(caches, caches / 'truncated.h5', caches / 'no-model')) != 0
    line = one_line(capsys)
    assert line.startswith('ctclip bench') and f'{caches / "truncated.h5"}: ' in line, line
    assert 'truncated file' in line


def test_dataloader_worker_error_names_the_volume(caches):
    """torch re-raises a worker's error as text; the line still names the volume and the file."""
    import torch

    from preprocessing.cache import open_cache

    class Volumes(torch.utils.data.Dataset):
        def __len__(self):
            return len(IDS)

        def __getitem__(self, i):
            cache = open_cache(caches / 'corrupt.h5')
            return torch.from_numpy(cache.read_crop(IDS[i], (0, 0, 0), (16, 32, 32)).copy())

    loader = torch.utils.data.DataLoader(Volumes(), batch_size=len(IDS), num_workers=1)
    with pytest.raises(RuntimeError) as caught:
        next(iter(loader))
    line = error_line(caught.value, 'train')
    assert line.startswith(f"ctclip train: {caches / 'corrupt.h5'}: volume '{IDS[3]}'"), line
    assert '\n' not in line


@pytest.mark.slow
def test_corrupt_chunk_in_bench_names_the_volume(caches, capsys):
    from ctclip.factory import create_model

    model = caches / 'model'
    create_model('resnet3d-tiny-tinybert').save_pretrained(model)
    assert main(bench(caches, caches / 'corrupt.h5', model)) == 1
    line = one_line(capsys)
    assert line.startswith(f"ctclip bench: {caches / 'corrupt.h5'}: volume '{IDS[3]}'"), line


@pytest.mark.slow
def test_truncated_cache_in_train_names_the_file(tmp_path, capsys):
    from tests.ctclip.training_data import make_cohort

    cohort = make_cohort(tmp_path / 'cohort', n_train=4, n_valid=2)
    os.truncate(cohort['cache'], cohort['cache'].stat().st_size // 2)
    args = ['train', '--config', 'train/stage1-small', f'data.cache={cohort["cache"]}']
    args += [f'data.labels={cohort["labels"]}', f'data.reports={cohort["reports"]}']
    args += [f'train.output_dir={tmp_path / "run"}', 'data.num_workers=0', '--local_rank=0']
    assert main(args) != 0
    line = one_line(capsys)
    assert line.startswith(f'ctclip train: {cohort["cache"]}: ') and 'truncated' in line, line


@pytest.mark.slow
def test_full_disk_in_train(tmp_path, capsys):
    from tests.ctclip.training_data import make_cohort

    cohort = make_cohort(tmp_path / 'cohort', n_train=8, n_valid=2)
    with tmpfs(tmp_path / 'small', 'size=1m') as small:
        args = ['train', '--config', 'train/stage1-small', f'data.cache={cohort["cache"]}']
        args += [f'data.labels={cohort["labels"]}', f'data.reports={cohort["reports"]}']
        args += [f'train.output_dir={small / "run"}', 'data.num_workers=0', 'train.steps=2']
        args += ['model.name=resnet3d-tiny-tinybert', 'train.progress=false', '--local_rank=0']
        assert main(args) == 1
        line = one_line(capsys)
        assert line.startswith(f'ctclip train: {small / "run"}') and 'disk full' in line, line
