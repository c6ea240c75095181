"""The cohort: patients, scans and reconstructions, split by patient, generated in parallel.

Each finished scan leaves a small JSON part file (its CSV rows and truth lines) under
`.synth/parts/`; the tables are assembled from those at the end. A rerun with the same settings
skips finished scans, so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctcommon.atomic import atomic_open, write_json
from ctcommon.findings import FINDINGS
from synth import grounding as synth_grounding
from synth import layouts, radchestct
from synth.scan import (
    ScanPlan,
    ScanTask,
    plan_scan,
    render_recon,
    scan_presence,
    stream,
)

_logger = logging.getLogger(__name__)

LAYOUTS = ('ct-rate', 'rad-chestct')
FORMAT_VERSION = 1
VALID_FRACTION = 0.2
SECOND_SCAN = 0.2
RECON_COUNTS = ((1, 0.55), (2, 0.40), (3, 0.05))
# The test split: candidate patients are numbered from here (train and validation patients are
# numbered 0..n-1, so the two never share a random stream) and planned on a stream of their own.
TEST_PATIENT_BASE = 1_000_000
TEST_STREAM = 9
TEST_POOL = 4000


def plan_cohort(n: int, seed: int, layout: str = 'ct-rate', small: bool = False) -> list[ScanTask]:
    """Patients (about 20% with two scans), an 80/20 patient split stratified by finding, 1-3
    recons per scan."""
    rng = stream(seed, 0)
    per_patient = []
    while sum(per_patient) < n:
        per_patient.append(2 if (rng.random() < SECOND_SCAN and sum(per_patient) + 2 <= n) else 1)
    n_pat = len(per_patient)
    n_valid = max(1, int(round(VALID_FRACTION * n_pat))) if n_pat > 1 else 0
    findings = [
        set().union(*(scan_presence(seed, p, s) for s in range(k)))
        for p, k in enumerate(per_patient)
    ]
    valid = stratified_split(findings, n_valid, rng)
    counts, probs = zip(*RECON_COUNTS, strict=False)
    tasks, next_pid = [], {'train': 1, 'valid': 1}
    rad_ids = rng.choice(90000, size=n, replace=False) + 10000
    for p, n_scans in enumerate(per_patient):
        split = 'valid' if p in valid else 'train'
        pid, next_pid[split] = next_pid[split], next_pid[split] + 1
        for s in range(n_scans):
            k = int(rng.choice(counts, p=probs)) if layout == 'ct-rate' else 1
            tasks.append(ScanTask(seed, p, s, split, pid, k, small, layout))
    if layout == 'rad-chestct':
        _assign_rad_ids(tasks, rad_ids, rng)
    return tasks


def plan_test(
    seed: int,
    min_count: int,
    layout: str = 'ct-rate',
    small: bool = False,
    used_rad_ids: set[int] = frozenset(),
) -> list[ScanTask]:
    """Test patients, disjoint from train and validation, chosen so that every class has at least
    `min_count` positive and `min_count` negative volumes.

    Only which patients are taken is steered: each candidate is drawn exactly like a training
    patient (same prevalences and co-occurrences, same renderer), from its own streams
    (`TEST_PATIENT_BASE` + i). From a pool of candidates, a greedy cover takes the patient that
    advances the most unmet (class, positive|negative) needs, earliest candidate on ties, until
    every need is met. The counts are in volumes (a CT-RATE scan has 1-3 reconstructions), but a
    candidate's gain counts each class once, for the patient (positive when any scan is, negative
    when none is), so neither several reconstructions nor a follow-up scan earn extra credit.
    On the RAD-ChestCT layout the classes also include HLIP's mapped columns (one column can
    be set by two findings), so the benchmark's own classes meet the counts.
    """
    if min_count < 1:
        raise ValueError(f'min_count must be a positive number of volumes, not {min_count!r}')
    rng = stream(seed, TEST_STREAM)
    counts_, probs = zip(*RECON_COUNTS, strict=False)
    groups = class_groups(layout)
    candidates = []  # (reconstructions of each scan, (scans, classes) positive matrix)
    for i in range(TEST_POOL):
        n_scans = 2 if rng.random() < SECOND_SCAN else 1
        recons = [
            int(rng.choice(counts_, p=probs)) if layout == 'ct-rate' else 1 for _ in range(n_scans)
        ]
        found = [scan_presence(seed, TEST_PATIENT_BASE + i, s) for s in range(n_scans)]
        pos = np.array([[bool(fs & g) for g in groups] for fs in found])
        candidates.append((recons, pos))
    volumes = np.array([np.sum(c[0]) for c in candidates])
    pos_vol = np.stack([np.array(c[0]) @ c[1] for c in candidates])  # (P, C) positive volumes
    neg_vol = volumes[:, None] - pos_vol
    have_pos = np.zeros(len(groups))
    have_neg = np.zeros(len(groups))
    chosen: list[int] = []
    free = np.ones(len(candidates), dtype=bool)
    while (have_pos < min_count).any() or (have_neg < min_count).any():
        want_pos = (have_pos < min_count).astype(float)
        want_neg = (have_neg < min_count).astype(float)
        gain = (pos_vol > 0) @ want_pos + (pos_vol == 0) @ want_neg  # patient-level
        gain[~free] = -1
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            names = class_names(layout)
            short = [f'{n} (+)' for n, h in zip(names, have_pos, strict=True) if h < min_count]
            short += [f'{n} (-)' for n, h in zip(names, have_neg, strict=True) if h < min_count]
            raise ValueError(
                f'test_min_count must be at most what {TEST_POOL} candidate patients hold, '
                f'not {min_count}: too few volumes of {short}'
            )
        chosen.append(best)
        free[best] = False
        have_pos += pos_vol[best]
        have_neg += neg_vol[best]
    tasks = []
    for pid, p in enumerate(sorted(chosen), start=1):
        for s, k in enumerate(candidates[p][0]):
            tasks.append(ScanTask(seed, TEST_PATIENT_BASE + p, s, 'test', pid, k, small, layout))
    if layout == 'rad-chestct':
        numbers = [
            int(i) + 10000 for i in rng.permutation(90000) if int(i) + 10000 not in used_rad_ids
        ]
        for t, number in zip(tasks, numbers, strict=False):
            t.rad_id = f'tst{number:05d}'
    return tasks


def class_groups(layout: str) -> list[frozenset[str]]:
    """The findings behind each class a benchmark of `layout` scores (a class is positive when
    any of its findings is present): the 18 findings, plus HLIP's mapped RAD-ChestCT columns."""
    groups = [frozenset({f}) for f in FINDINGS]
    if layout == 'rad-chestct':
        for column in radchestct.HLIP_MAPPED.values():
            groups.append(
                frozenset(f for f, cols in radchestct.RAW_FROM_FINDING.items() if column in cols)
            )
    return groups


def class_names(layout: str) -> list[str]:
    names = list(FINDINGS)
    if layout == 'rad-chestct':
        names += [f'{name} (HLIP: {col})' for name, col in radchestct.HLIP_MAPPED.items()]
    return names


def stratified_split(findings: list[set[str]], n_valid: int, rng: np.random.Generator) -> set[int]:
    """Pick `n_valid` patients so that each finding has its share of positive patients in both splits.

    Iterative stratification (Sechidis et al., 2011): the rarest finding's patients are placed
    first, each where that finding still lacks the most positives. A plain random 20 % split of
    ~170 patients left a 10 %-prevalence finding with one positive validation patient, so its
    AUROC swung by tenths between otherwise equal runs.
    """
    n = len(findings)
    share = {'valid': n_valid / n if n else 0.0}
    share['train'] = 1.0 - share['valid']
    room = {'valid': n_valid, 'train': n - n_valid}
    totals = {f: sum(f in fs for fs in findings) for f in FINDINGS}
    wanted = {s: {f: share[s] * totals[f] for f in FINDINGS} for s in room}
    order = [int(p) for p in rng.permutation(n)]  # ties between patients are broken at random
    todo, valid = set(order), set()

    def place(p: int, finding: str | None) -> None:
        key = (lambda s: (room[s] > 0, wanted[s][finding], room[s])) if finding else room.get
        split = max(('valid', 'train'), key=key)
        room[split] -= 1
        for f in findings[p]:
            wanted[split][f] -= 1
        if split == 'valid':
            valid.add(p)
        todo.discard(p)

    while todo:
        left = {f: [p for p in order if p in todo and f in findings[p]] for f in FINDINGS}
        left = {f: ps for f, ps in left.items() if ps}
        if not left:
            for p in [p for p in order if p in todo]:
                place(p, None)
            break
        rarest = min(left, key=lambda f: (len(left[f]), FINDINGS.index(f)))
        for p in left[rarest]:
            place(p, rarest)
    return valid


def _assign_rad_ids(tasks: list[ScanTask], ids: np.ndarray, rng: np.random.Generator) -> None:
    """RAD-ChestCT splits: trn / val / tst by patient, about 63 / 27 / 10 like the public subset."""
    patients = sorted({t.patient_no for t in tasks})
    draw = rng.random(len(patients))
    prefix = {
        p: 'trn' if u < 0.63 else ('val' if u < 0.9 else 'tst')
        for p, u in zip(patients, draw, strict=False)
    }
    for t, i in zip(tasks, ids, strict=False):
        t.rad_id = f'{prefix[t.patient_no]}{int(i):05d}'


def generate_cohort(
    out: Path,
    n: int,
    seed: int = 0,
    layout: str = 'ct-rate',
    small: bool = False,
    workers: int = 1,
    progress: bool = True,
    test_min_count: int = 0,
) -> Path:
    """Write a synthetic cohort of `n` scans under `out` and return the cohort root (`out`).

    Args:
        out: output folder (created; a finished run with the same settings is resumed, not redone).
        n: number of scans (= reports); CT-RATE scans have 1-3 reconstructions each.
        seed: everything is a deterministic function of the seed.
        layout: 'ct-rate' (NIfTI v1 + v2, CSVs) or 'rad-chestct' (.npz + label tables).
        small: coarse grids (128-160 px, 4-6 mm slices) for tests and the demo.
        workers: processes; the output does not depend on it.
        test_min_count: when > 0, also a `test` split of extra patients (`plan_test`) with at
            least this many positive and negative volumes of every class. Train and validation
            do not change with it (their volumes stay byte for byte the same); `n` may then be 0.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, not {layout!r}')
    if not isinstance(test_min_count, (int, np.integer)) or test_min_count < 0:
        raise ValueError(f'test_min_count must be a number of volumes >= 0, not {test_min_count!r}')
    smallest = 0 if test_min_count else 1
    if not isinstance(n, (int, np.integer)) or n < smallest:
        raise ValueError(f'n must be a positive number of scans, not {n!r}')
    if workers < 1:
        raise ValueError(f'workers must be >= 1, not {workers!r}')
    out = Path(out)
    settings = dict(
        n=int(n), seed=int(seed), layout=layout, small=bool(small), format_version=FORMAT_VERSION
    )
    if test_min_count:  # only then: a cohort made before the test split still resumes
        settings['test_min_count'] = int(test_min_count)
    parts = _prepare(out, settings)
    tasks = plan_cohort(int(n), int(seed), layout, bool(small)) if n else []
    if test_min_count:
        used = {int(t.rad_id[3:]) for t in tasks if t.rad_id}
        tasks += plan_test(int(seed), int(test_min_count), layout, bool(small), used)
    todo = [t for t in tasks if not _done(t, out)]
    _logger.info('synth: %d scans (%d to do) in %s', len(tasks), len(todo), out)
    jobs = [(t, str(out)) for t in todo]
    bar = tqdm(
        total=len(tasks), initial=len(tasks) - len(todo), desc='synth scans', disable=not progress
    )
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            _run_job(job)
            bar.update()
    else:
        ctx = mp.get_context('fork' if 'fork' in mp.get_all_start_methods() else 'spawn')
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_run_job, jobs):
                bar.update()
    bar.close()
    records = [
        json.loads((parts / f'{t.scan_name}.json').read_text(encoding='utf-8')) for t in tasks
    ]
    if layout == 'ct-rate':
        _assemble_ctrate(out, records)
    else:
        radchestct.assemble(out, records, small)
    _write_truth(out, records)
    if layout == 'ct-rate':
        synth_grounding.write_dataset(out, records)
    return out


def _prepare(out: Path, settings: dict) -> Path:
    """Create the output folder; refuse to mix two different cohorts in one folder."""
    state = out / '.synth'
    parts = state / 'parts'
    stamp = state / 'settings.json'
    if stamp.is_file():
        old = json.loads(stamp.read_text(encoding='utf-8'))
        if old != settings:
            raise ValueError(
                f'{out} holds a cohort made with {old}, not {settings}; use another --out'
            )
    parts.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        write_json(stamp, settings, newline=False, indent=None)
    return parts


def _done(task: ScanTask, out: Path) -> bool:
    """A scan is finished when its part file and all its volume files exist."""
    if not (out / '.synth' / 'parts' / f'{task.scan_name}.json').is_file():
        return False
    if task.layout == 'rad-chestct':
        return radchestct.volume_path(out, task.rad_id).is_file()
    if not _grounding_done(task, out):
        return False
    return all(p.is_file() for name in task.volume_names() for p in layouts.ctrate_paths(out, name))


def _grounding_done(task: ScanTask, out: Path) -> bool:
    """The part lists its volumes' grounding masks (a part from before the masks has no list)."""
    part = json.loads((out / '.synth' / 'parts' / f'{task.scan_name}.json').read_text('utf-8'))
    if 'grounding' not in part:
        return False
    return all(synth_grounding.mask_path(out, i['name']).is_file() for i in part['grounding'])


def _run_job(job: tuple[ScanTask, str]) -> None:
    task, out = job
    record = build_scan(task, Path(out))
    path = Path(out) / '.synth' / 'parts' / f'{task.scan_name}.json'
    write_json(path, record, newline=False, indent=None)


def build_scan(task: ScanTask, out: Path) -> dict:
    """Render and write every reconstruction of one scan; return its table rows and truth."""
    plan = plan_scan(task)
    names = task.volume_names()
    record = dict(
        scan=task.scan_name,
        split=task.split,
        volumes=[],
        truth=[],
        metadata=[],
        reports=[],
        labels=[],
        grounding=[],
    )
    present = set(plan.findings)
    for r, name in enumerate(names):
        hu, masks, outside, _ = render_recon(plan, r)
        recon = plan.recons[r]
        hu = np.clip(np.rint(hu), -1024, 3071)
        if task.layout == 'ct-rate':
            hu[outside] = plan.scanner['intercept']  # padding: stored value 0
            layouts.write_ctrate_volume(
                out,
                name,
                hu.astype(np.int16),
                recon['grid'].spacing_zyx,
                recon['ipp_xyz'],
                plan.scanner['intercept'],
            )
            shown = synth_grounding.grounding_item(
                name, task.split, masks, plan.sentences, FINDINGS
            )
            if shown is not None:
                synth_grounding.write_masks(
                    out, name, shown[1], recon['grid'].spacing_zyx, recon['ipp_xyz']
                )
                record['grounding'].append(shown[0])
            record['metadata'].append(layouts.metadata_row(name, plan.scanner, recon))
            record['reports'].append({'VolumeName': name, **plan.report})
        else:
            hu[outside] = -1000
            layouts.write_npz(radchestct.volume_path(out, name), hu)
            record['reports'].append({'NoteAcc_DEID': name, 'VolumeName': name, **plan.report})
        record['labels'].append(layouts.label_row(name, present))
        record['truth'].append(truth_line(plan, r, name, masks))
    return record


def truth_line(plan: ScanPlan, r: int, name: str, masks: dict[str, np.ndarray]) -> dict:
    """Where each present finding was rendered, in voxel (z, y, x) of the written HU volume."""
    t, grid = plan.task, plan.recons[r]['grid']
    items = []
    for fname in FINDINGS:
        f = plan.findings.get(fname)
        if f is None:
            continue
        mask = masks.get(fname)
        idx = np.nonzero(mask) if mask is not None else (np.array([]),) * 3
        if idx[0].size == 0:
            _logger.warning('%s: %s covers no voxel of %s', t.scan_name, fname, name)
        bbox = (
            [[int(i.min()) for i in idx], [int(i.max()) + 1 for i in idx]] if idx[0].size else None
        )
        centre = [round(float(i.mean()), 2) for i in idx] if idx[0].size else None
        instances = [
            dict(
                centre_zyx=[round(float(v), 2) for v in grid.to_index(p['centre'])],
                **({'size_mm': round(p['diameter'], 1)} if 'diameter' in p else {}),
            )
            for p in f.parts
            if 'centre' in p
        ]
        items.append(
            dict(
                finding=fname,
                certainty='certain' if f.certain else 'uncertain',
                voxels=int(idx[0].size),
                centre_zyx=centre,
                bbox_zyx=bbox,
                instances=instances,
                description=_jsonable(f.desc),
            )
        )
    return dict(
        volume=name,
        patient=f'{t.split}_{t.pid}',
        scan=t.scan_name,
        split=t.split,
        shape_zyx=list(grid.shape_zyx),
        spacing_zyx=[round(s, 6) for s in grid.spacing_zyx],
        findings=items,
        incidental=plan.incidental,
    )


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _assemble_ctrate(out: Path, records: list[dict]) -> None:
    ds = out / 'dataset'
    for split, long in (('train', 'train'), ('valid', 'validation'), ('test', 'test')):
        mine = [r for r in records if r['split'] == split]
        if split == 'test' and not mine:
            continue  # a cohort without a test split has no test tables

        def rows(key: str, mine: list[dict] = mine) -> list[dict]:
            return [row for r in mine for row in r[key]]

        layouts.write_csv(
            ds / 'metadata' / f'{long}_metadata.csv', layouts.METADATA_COLUMNS, rows('metadata')
        )
        layouts.write_csv(
            ds / 'radiology_text_reports' / f'{long}_reports.csv',
            layouts.REPORT_COLUMNS,
            rows('reports'),
        )
        layouts.write_csv(
            ds / 'multi_abnormality_labels' / f'{split}_predicted_labels.csv',
            ('VolumeName', *FINDINGS),
            rows('labels'),
        )


def _write_truth(out: Path, records: list[dict]) -> None:
    with atomic_open(out / 'truth.jsonl', 'w') as f:
        for r in records:
            for line in r['truth']:
                f.write(json.dumps(line) + '\n')
