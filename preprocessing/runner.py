"""The resumable, parallel preprocessing run: manifest -> per-volume parts -> one cache file.

Each worker writes every finished volume to its own small part file (atomically, by rename) in
`.<cache>.parts/`. When all volumes are done, the main process copies the parts' compressed chunks
into the cache in manifest order (again via a temporary file and a rename) and deletes the parts.
A SIGKILL at any moment therefore loses at most the volumes in flight, a rerun skips everything
already finished, and the final file does not depend on worker count or timing.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py

from preprocessing import reports
from preprocessing.cache import VOLUMES, CacheWriter, open_cache, write_single_volume
from preprocessing.checks import CheckLimits
from preprocessing.errors import PreprocessError
from preprocessing.manifest import build_manifest, write_manifest
from preprocessing.recipes import Recipe, get_recipe

_logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    'input': None,
    'out': None,
    'recipe': 'li2025',
    'recipe_overrides': {},
    'metadata': [],
    'prefer_version': 'v2',
    'drop_no_chest': True,
    'workers': 1,
    'shard': None,
    'strict': False,
    'limit': None,
    'radchest_spacing': None,
    'checks': {},
    'qc': {'samples': 8},
    'keep_parts': False,
    'progress': True,
}


@dataclass
class Summary:
    """What a run did; `exit_code` applies the --strict rule."""

    out: str
    recipe: str
    recipe_hash: str
    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    strict: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.strict and self.failed else 0

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
        array, attrs = process_row(row, recipe, CheckLimits(**limits), radchest_spacing)
        write_single_volume(part, recipe, row['volume_id'], array, attrs)
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


def _init_worker(threads: int) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


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
            workers, mp_context=ctx, initializer=_init_worker, initargs=(1,)
        ) as pool:
            for future in cf.as_completed([pool.submit(_work, job) for job in jobs]):
                bar.update()
                try:
                    yield future.result()
                except cf.process.BrokenProcessPool as exc:
                    raise RuntimeError(
                        'a preprocessing worker died (killed, or out of memory); finished volumes '
                        'are kept: rerun the same command to resume'
                    ) from exc
    bar.close()


def _part_is_valid(part: Path, recipe: Recipe, row: dict) -> bool:
    if not part.is_file():
        return False
    try:
        with h5py.File(part, 'r') as f:
            attrs = f[VOLUMES][row['volume_id']].attrs
            return attrs['recipe_hash'] == recipe.hash and attrs['source_path'] == str(row['path'])
    except (OSError, KeyError):
        return False


def _reusable_from(out: Path, recipe: Recipe, rows: list[dict]) -> set[str]:
    """Ids that a previous cache at `out` already holds for this recipe and these sources."""
    if not out.is_file():
        return set()
    try:
        cache = open_cache(out)
    except (OSError, ValueError):
        return set()
    if cache.kind != 'single' or cache.recipe_hash != recipe.hash:
        return set()
    with cache:
        return {
            r['volume_id']
            for r in rows
            if r['volume_id'] in cache
            and cache.attrs(r['volume_id']).get('source_path') == str(r['path'])
        }


def _select_rows(cfg: dict) -> list[dict]:
    rows = build_manifest(
        cfg['input'], cfg.get('metadata') or None, cfg['prefer_version'], cfg['drop_no_chest']
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
    if not cfg['input'] or not cfg['out']:
        raise ValueError('preprocess needs both input (folder or manifest.csv) and out (cache.h5)')
    started = time.perf_counter()
    recipe = get_recipe(cfg['recipe'], **(cfg.get('recipe_overrides') or {}))
    limits = asdict(CheckLimits(**(cfg.get('checks') or {})))
    out = Path(cfg['out'])
    shard = parse_shard(cfg.get('shard'))
    if shard:
        out = shard_path(out, shard)
    rows = _select_rows(cfg)
    parts = out.parent / f'.{out.name}.parts'
    parts.mkdir(parents=True, exist_ok=True)
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
    written = _assemble(out, recipe, rows, parts, reuse)
    summary = Summary(
        out=str(out),
        recipe=recipe.name,
        recipe_hash=recipe.hash,
        total=len(rows),
        ok=len(todo) - len(failures),
        skipped=len(rows) - len(todo),
        failed=len(failures),
        strict=bool(cfg['strict']),
        failures=[{k: f[k] for k in ('volume_id', 'path', 'stage', 'reason')} for f in failures],
    )
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.reports = reports.write_reports(out, summary.to_dict(), failures, cfg.get('qc') or {})
    if not cfg['keep_parts']:
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
