"""The resumable, parallel preprocessing run: manifest -> per-volume parts -> one cache file.

Each worker writes every finished volume to its own small part file (atomically, by rename) in
`.<cache>.parts/`. When all volumes are done, the main process copies the parts' compressed chunks
into the cache in manifest order (again via a temporary file and a rename) and deletes the parts.
A SIGKILL at any moment therefore loses at most the volumes in flight, a rerun skips everything
already finished, and the final file does not depend on worker count or timing.

Reuse is keyed on content: a part or a previous cache entry is reused only when its voxels match
its checksum, its recipe hash matches, and its source is unchanged (the source's size, mtime, ctime
and inode as stored; when they differ, its SHA-256 decides). A write error (a full disk) fails that
volume with the reason, keeps the finished parts for a rerun, and makes the exit status non-zero.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py

from ctcommon.atomic import pid_alive, remove_stale_temps
from ctcommon.settings import FailureBudget, to_mapping
from preprocessing import reports
from preprocessing.cache import (
    VOLUMES,
    CacheWriter,
    _attrs_dict,
    is_volume_cache,
    open_cache,
    volume_problem,
    write_single_volume,
)
from preprocessing.checks import CheckLimits
from preprocessing.errors import CacheCorruptError, PreprocessError
from preprocessing.manifest import build_manifest, split_duplicates, write_manifest
from preprocessing.recipes import Recipe, get_recipe
from preprocessing.settings import PreprocessSettings, load_settings

_logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = to_mapping(PreprocessSettings())


@dataclass
class Summary:
    """What a run did; `exit_code` applies the failure budget."""

    out: str
    recipe: str
    recipe_hash: str
    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    max_failed_fraction: float = 0.0
    write_failed: int = 0
    error: str = ''
    failures: list[dict[str, str]] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """1 when a write failed, the cache was not written, or more volumes failed than
        `failures.max_fraction` allows (by default any)."""
        if self.error or self.write_failed:
            return 1
        return int(FailureBudget(self.max_failed_fraction).exceeded(self.failed, self.total))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' with 0 <= i < n (SLURM_ARRAY_TASK_ID style, 0-based)."""
    if text in (None, ''):
        return None
    try:
        i, n = (int(v) for v in str(text).split('/'))
    except ValueError as exc:
        raise ValueError(f"--shard must look like 'i/n' (e.g. 0/4), not {text!r}") from exc
    if not 0 <= i < n:
        raise ValueError(f'--shard i/n needs 0 <= i < n, not {text!r}')
    return i, n


def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return out.with_name(f'{out.stem}.shard{i:04d}-of-{n:04d}{out.suffix}')


def find_shards(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f'{out.stem}.shard*-of-*{out.suffix}'))


def _work(job: tuple[dict, dict, dict, float | None, str]) -> dict[str, str]:
    """Process one row in a worker and write its part file; never raises for bad input."""
    from preprocessing.pipeline import process_row

    row, recipe_dict, limits, radchest_spacing, part = job
    recipe = Recipe.from_dict(recipe_dict)
    try:
        try:  # before reading, so that a change while we work shows at the next run
            stat = source_stat(row['path'])
        except OSError:  # missing or unreadable: process_row says so
            stat = ''
        array, attrs = process_row(row, recipe, CheckLimits(**limits), radchest_spacing)
        attrs['source_stat'] = stat
        try:
            write_single_volume(part, recipe, row['volume_id'], array, attrs)
        except (OSError, CacheCorruptError) as exc:  # a full disk: this volume failed, go on
            stage, reason = 'write', str(exc)
        else:
            return {'volume_id': row['volume_id'], 'status': 'ok'}
    except PreprocessError as exc:
        stage, reason = exc.stage, exc.reason
    except MemoryError:
        stage, reason = 'resample', 'out of memory'
    except Exception as exc:  # one odd file must not stop a cohort run; the report keeps the type
        _logger.debug('unexpected error on %s', row['path'], exc_info=True)
        stage, reason = 'read', f'{type(exc).__name__}: {exc}'
    return {
        'volume_id': row['volume_id'],
        'path': str(row['path']),
        'status': 'failed',
        'stage': stage,
        'reason': reason,
    }


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """End this worker when its parent dies, whether by SIGKILL, SIGTERM or a crash.

    Spawned pool workers each hold both ends of the job queue, so they never see it close and
    would otherwise live on (about 200 MB each). Linux kills the worker through
    PR_SET_PDEATHSIG; a thread watching the parent pid covers other systems and the moment
    before prctl took effect.
    """
    if sys.platform.startswith('linux'):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the watchdog alone
            _logger.debug('prctl(PR_SET_PDEATHSIG) unavailable', exc_info=True)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name='parent-watchdog', daemon=True).start()


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    if parent_pid is not None:  # first: importing SimpleITK takes a while
        _die_with_parent(parent_pid)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


# glibc's malloc asks for transparent huge pages (glibc >= 2.35; older ones ignore the setting).
# ITK allocates a 150 MiB volume with `new` and touches every page: in 2 MiB pages one CT-RATE
# volume costs 0.62 CPU s instead of 0.72 (benchmarks/perf, preprocess). NumPy does this already.
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'


@contextmanager
def _huge_page_children() -> Iterator[None]:
    """Processes started inside read GLIBC_TUNABLES with huge pages on; this one is unchanged
    (glibc reads its tunables once, at start)."""
    before = os.environ.get('GLIBC_TUNABLES')
    parts = [p for p in (before or '').split(':') if p and not p.startswith('glibc.malloc.hugetlb')]
    os.environ['GLIBC_TUNABLES'] = ':'.join([*parts, HUGE_PAGES_TUNABLE])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop('GLIBC_TUNABLES', None)
        else:
            os.environ['GLIBC_TUNABLES'] = before


def _run_jobs(jobs: list[tuple], workers: int, progress: bool) -> Iterator[dict[str, str]]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit='vol', desc='preprocess', disable=not progress or not jobs)
    if workers <= 1:
        for job in jobs:
            result = _work(job)
            bar.update()
            yield result
    else:
        ctx = multiprocessing.get_context('spawn')
        with cf.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(1, os.getpid())
        ) as pool:
            with _huge_page_children():  # a spawn pool starts its workers on the first submits
                futures = [pool.submit(_work, job) for job in jobs]
            for future in cf.as_completed(futures):
                bar.update()
                try:
                    yield future.result()
                except cf.process.BrokenProcessPool as exc:
                    raise RuntimeError(
                        'a preprocessing worker died (killed, or out of memory); finished volumes '
                        'are kept: rerun the same command to resume'
                    ) from exc
    bar.close()


def source_stat(path: str | Path) -> str:
    """Size, mtime, ctime and inode of a source file (or a DICOM folder's files), as JSON.

    It gates the SHA-256: a source whose stat is unchanged is not hashed again. Replacing a file at
    the same path changes its ctime or inode even when its size and mtime are copied (`cp -p`).
    """
    path = Path(path)
    files = sorted(q for q in path.iterdir() if q.is_file()) if path.is_dir() else [path]
    stats = []
    for file in files:
        st = file.stat()
        stats.append([file.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return json.dumps(stats, separators=(',', ':'))


def _source_unchanged(attrs: dict, row: dict, where: str) -> bool:
    """Whether a cached entry was made from the source that `row` names now (content, not path)."""
    vid, path = row['volume_id'], str(row['path'])
    if attrs.get('source_path') != path:
        return False
    try:
        if attrs.get('source_stat') and attrs['source_stat'] == source_stat(path):
            return True
        from preprocessing.pipeline import source_sha256

        same = bool(attrs.get('source_sha256')) and attrs['source_sha256'] == source_sha256(path)
    except OSError:  # gone or unreadable now: processing reports why
        return False
    if not same:
        _logger.info('%s: source %s changed since %s was written: reprocessing', vid, path, where)
    return same


def _part_is_valid(part: Path, recipe: Recipe, row: dict) -> bool:
    """A part is reused only if its voxels match its checksum and its source is unchanged."""
    if not part.is_file():
        return False
    try:
        with h5py.File(part, 'r') as f:
            ds = f[VOLUMES][row['volume_id']]
            attrs = _attrs_dict(ds.attrs)
            if attrs.get('recipe_hash') != recipe.hash:
                return False
            problem = volume_problem(ds)
    except (OSError, KeyError, RuntimeError) as exc:
        problem = f'unreadable ({exc})'
    if problem is not None:
        _logger.warning(
            '%s: part %s is damaged (%s): reprocessing', row['volume_id'], part, problem
        )
        return False
    return _source_unchanged(attrs, row, 'its part')


def _reusable_from(out: Path, recipe: Recipe, rows: list[dict]) -> set[str]:
    """Ids that a previous cache at `out` holds, intact, for this recipe and these sources."""
    if not out.is_file():
        return set()
    try:
        cache = open_cache(out)
    except (OSError, ValueError):
        return set()
    if cache.kind != 'single' or cache.recipe_hash != recipe.hash:
        return set()
    reuse, unchecked = set(), 0
    with cache:
        for row in rows:
            vid = row['volume_id']
            if vid not in cache:
                continue
            problem = cache.problem(vid)
            if problem is not None and problem.startswith('no checksum'):
                unchecked += 1
            elif problem is not None:
                _logger.warning('%s in %s: %s: reprocessing', vid, out, problem)
            elif _source_unchanged(cache.attrs(vid), row, 'the cache'):
                reuse.add(vid)
    if unchecked:
        _logger.warning(
            '%d volumes of %s have no checksum (an older cache format): reprocessing them',
            unchecked,
            out,
        )
    return reuse


_LEGACY_TMP = re.compile(r'\.tmp(\d+)(\.png)?$')


def _remove_stale_temps(folder: Path) -> None:
    """Temporary files of dead writers: ctcommon.atomic names and the older `<name>.tmp<pid>`."""
    removed = remove_stale_temps(folder)
    if folder.is_dir():
        for path in folder.iterdir():
            match = _LEGACY_TMP.search(path.name)
            if match and path.is_file() and not pid_alive(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
    for path in removed:
        _logger.info('removed the temporary file %s of a run that died', path)


def check_output(out: Path) -> None:
    """Refuse an output path that cannot work, before any volume is read."""
    if out.is_dir():
        raise ValueError(
            f'out must be a cache file path (such as {out / "cache.h5"}), not the folder {out}'
        )
    if out.exists() and not is_volume_cache(out):
        raise ValueError(
            f'out {out} exists and is not a ctclip cache: refusing to overwrite it '
            '(remove it or choose another path)'
        )
    folder = out.parent
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise ValueError(f'output folder {folder} cannot be created: {existing} is a file')
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ValueError(f'output folder {folder} is not writable ({why})') from exc


def _select_rows(cfg: dict) -> list[dict]:
    rows = build_manifest(
        cfg['input'], cfg.get('metadata') or None, cfg['prefer_version'], cfg['drop_no_chest']
    )
    if not rows:
        raise ValueError(
            f'input {cfg["input"]} holds no volumes (NIfTI, DICOM series, .npz, CT-RATE tree)'
        )
    if cfg.get('limit'):
        rows = rows[: int(cfg['limit'])]
    shard = parse_shard(cfg.get('shard'))
    if shard:
        rows = rows[shard[0] :: shard[1]]
    return rows


def _assemble(
    out: Path, recipe: Recipe, rows: list[dict], parts: Path, reuse: set[str]
) -> list[str]:
    """Write the cache in manifest order from the parts and the previous cache."""
    written = []
    previous = h5py.File(out, 'r') if reuse else None
    try:
        with CacheWriter(out, recipe) as writer:
            for row in rows:
                vid = row['volume_id']
                part = parts / f'{vid}.h5'
                if part.is_file():
                    with h5py.File(part, 'r') as f:
                        writer.copy_from(f, vid)
                elif vid in reuse:
                    writer.copy_from(previous, vid)
                else:
                    continue
                written.append(vid)
    finally:
        if previous is not None:
            previous.close()
    return written


def run(cfg: dict) -> Summary:
    """Preprocess a cohort as `cfg` (see DEFAULTS) says; returns the counts and report paths."""
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    settings = load_settings(cfg)  # an unknown or ill-typed key fails here, before any work
    if not cfg['input'] or not cfg['out']:
        raise ValueError('preprocess needs both input (folder or manifest.csv) and out (cache.h5)')
    started = time.perf_counter()
    recipe = get_recipe(cfg['recipe'], **(cfg.get('recipe_overrides') or {}))
    limits = asdict(settings.checks)
    out = Path(cfg['out'])
    shard = parse_shard(cfg.get('shard'))
    if shard:
        out = shard_path(out, shard)
    check_output(out)
    rows, repeated = split_duplicates(_select_rows(cfg))
    parts = out.parent / f'.{out.name}.parts'
    parts.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out.parent)
    _remove_stale_temps(parts)
    write_manifest(rows, parts / 'manifest.csv')
    reuse = _reusable_from(out, recipe, rows)
    done = {
        r['volume_id'] for r in rows if _part_is_valid(parts / f'{r["volume_id"]}.h5', recipe, r)
    }
    todo = [r for r in rows if r['volume_id'] not in done | reuse]
    _logger.info(
        '%d volumes: %d finished earlier, %d to process (recipe %s, %s)',
        len(rows),
        len(rows) - len(todo),
        len(todo),
        recipe.name,
        recipe.hash,
    )
    jobs = [
        (r, recipe.to_dict(), limits, cfg['radchest_spacing'], str(parts / f'{r["volume_id"]}.h5'))
        for r in todo
    ]
    failures = [
        res
        for res in _run_jobs(jobs, int(cfg['workers']), cfg['progress'])
        if res['status'] == 'failed'
    ]
    order = {r['volume_id']: i for i, r in enumerate(rows)}
    failures.sort(key=lambda f: order[f['volume_id']])
    ok = len(todo) - len(failures)
    failures = repeated + failures
    error = ''
    try:
        written = _assemble(out, recipe, rows, parts, reuse)
    except (OSError, CacheCorruptError) as exc:  # the parts stay: a rerun resumes from them
        error = f'cache not written: {exc}'
        written = []
        _logger.error('%s', error)
    summary = Summary(
        out=str(out),
        recipe=recipe.name,
        recipe_hash=recipe.hash,
        total=len(rows) + len(repeated),
        ok=ok,
        skipped=len(rows) - len(todo),
        failed=len(failures),
        max_failed_fraction=float(cfg['failures']['max_fraction']),
        write_failed=sum(f['stage'] == 'write' for f in failures),
        error=error,
        failures=[{k: f[k] for k in ('volume_id', 'path', 'stage', 'reason')} for f in failures],
    )
    summary.seconds = round(time.perf_counter() - started, 3)
    try:
        summary.reports = reports.write_reports(
            out, summary.to_dict(), failures, cfg.get('qc') or {}, cache_written=not error
        )
    except OSError as exc:
        summary.error = summary.error or f'reports not written: {exc}'
        _logger.error('reports for %s not written: %s', out, exc)
    if not cfg['keep_parts'] and not error:
        shutil.rmtree(parts, ignore_errors=True)
    _logger.info(
        'cache %s: %d volumes (%d new, %d reused, %d failed) in %.1f s',
        out,
        len(written),
        summary.ok,
        summary.skipped,
        summary.failed,
        summary.seconds,
    )
    return summary
