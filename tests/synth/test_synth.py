"""The synthetic cohort on disk: CT-RATE layout, both file versions, tables, splits, resume, CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from llm_labeling.schema import FINDINGS
from synth import generate_cohort, layouts, plan_cohort

N_SCANS = 7
SEED = 3


@pytest.fixture(scope='module')
def cohort(tmp_path_factory) -> Path:
    return generate_cohort(
        tmp_path_factory.mktemp('synth') / 'c', n=N_SCANS, seed=SEED, small=True, progress=False
    )


def _csv(path: Path) -> list[dict]:
    with path.open(encoding='utf-8', newline='') as f:
        return list(csv.DictReader(f))


def _tables(root: Path) -> tuple[dict, dict, dict]:
    ds = root / 'dataset'
    meta, reports, labels = {}, {}, {}
    for split, long in (('train', 'train'), ('valid', 'validation')):
        meta.update({r['VolumeName']: r for r in _csv(ds / 'metadata' / f'{long}_metadata.csv')})
        reports.update(
            {
                r['VolumeName']: r
                for r in _csv(ds / 'radiology_text_reports' / f'{long}_reports.csv')
            }
        )
        labels.update(
            {
                r['VolumeName']: r
                for r in _csv(ds / 'multi_abnormality_labels' / f'{split}_predicted_labels.csv')
            }
        )
    return meta, reports, labels


def _truth(root: Path) -> dict[str, dict]:
    return {
        t['volume']: t
        for t in map(json.loads, (root / 'truth.jsonl').read_text(encoding='utf-8').splitlines())
    }


def test_tables_have_ctrate_columns(cohort):
    ds = cohort / 'dataset'
    with (ds / 'metadata' / 'train_metadata.csv').open(encoding='utf-8') as f:
        assert tuple(next(csv.reader(f))) == layouts.METADATA_COLUMNS
    assert len(layouts.METADATA_COLUMNS) == 44
    with (ds / 'multi_abnormality_labels' / 'train_predicted_labels.csv').open(
        encoding='utf-8'
    ) as f:
        assert tuple(next(csv.reader(f))) == ('VolumeName', *FINDINGS)
    with (ds / 'radiology_text_reports' / 'validation_reports.csv').open(encoding='utf-8') as f:
        assert tuple(next(csv.reader(f))) == layouts.REPORT_COLUMNS


def test_every_volume_has_both_versions_and_one_row_per_table(cohort):
    meta, reports, labels = _tables(cohort)
    truth = _truth(cohort)
    assert set(meta) == set(reports) == set(labels) == set(truth)
    scans = {name.rsplit('_', 1)[0] for name in meta}
    assert len(scans) == N_SCANS
    for name, row in meta.items():
        assert re.fullmatch(r'(train|valid)_\d+_[a-h]_\d\.nii\.gz', name)
        v1, v2 = layouts.ctrate_paths(cohort, name)
        assert v1.is_file() and v2.is_file()
        assert re.fullmatch(r'\d{3}Y', row['PatientAge'])
        assert re.fullmatch(r'\[-?[\d.]+, -?[\d.]+\]', row['XYSpacing'])
        assert row['ImageOrientationPatient'] == '[1, 0, 0, 0, 1, 0]'
    assert not list(cohort.rglob('.tmp-*')), 'temporary files left behind'


def test_reconstructions_share_the_report(cohort):
    _, reports, labels = _tables(cohort)
    by_scan: dict[str, list[str]] = {}
    for name in reports:
        by_scan.setdefault(name.rsplit('_', 1)[0], []).append(name)
    assert any(len(v) > 1 for v in by_scan.values()), 'no scan with several reconstructions'
    for names in by_scan.values():
        texts = {tuple(reports[n][k] for k in layouts.REPORT_COLUMNS[1:]) for n in names}
        assert len(texts) == 1
        assert len({tuple(labels[n][f] for f in FINDINGS) for n in names}) == 1


def test_v2_geometry_matches_metadata_and_v1_is_blank(cohort):
    meta, _, _ = _tables(cohort)
    for name, row in meta.items():
        v1, v2 = layouts.ctrate_paths(cohort, name)
        img2, img1 = sitk.ReadImage(str(v2)), sitk.ReadImage(str(v1))
        xy = json.loads(row['XYSpacing'])
        assert img2.GetSpacing() == pytest.approx((xy[0], xy[1], float(row['ZSpacing'])), rel=1e-5)
        assert img2.GetOrigin() == pytest.approx(json.loads(row['ImagePositionPatient']), abs=1e-3)
        assert img2.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
        assert img2.GetSize() == (int(row['Columns']), int(row['Rows']), int(row['NumberofSlices']))
        assert img1.GetSpacing() == (1.0, 1.0, 1.0) and img1.GetOrigin() == (0.0, 0.0, 0.0)
        assert img1.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert nib.load(v1).header['sform_code'] == 0 and nib.load(v2).header['sform_code'] == 1


def test_v1_needs_the_metadata_and_v2_does_not(cohort):
    meta, _, _ = _tables(cohort)
    intercepts = set()
    for name, row in meta.items():
        v1, v2 = layouts.ctrate_paths(cohort, name)
        raw = np.asarray(nib.load(v1).dataobj)
        hu = np.asarray(nib.load(v2).dataobj)
        assert raw.dtype == np.int16 and hu.dtype == np.int16
        slope, intercept = float(row['RescaleSlope']), int(row['RescaleIntercept'])
        intercepts.add(intercept)
        np.testing.assert_array_equal(raw * slope + intercept, hu)
        corner, centre_air = hu[0, 0, :], hu[hu.shape[0] // 2, 2, :]
        assert (corner == intercept).all(), 'padding outside the scan circle must store 0'
        assert (raw[0, 0, :] == 0).all()
        assert -1100 < np.median(centre_air) < -900, 'v2 is HU: air in front of the body'
        assert np.median(raw[raw.shape[0] // 2, 2, :]) > 0, (
            'v1 is raw: air is not -1000 without the intercept'
        )
    assert intercepts == {-1024, -8192}, f'cohort should hold both scanner kinds, got {intercepts}'


def test_split_by_patient():
    tasks = plan_cohort(300, seed=0)
    split_of: dict[int, set[str]] = {}
    for t in tasks:
        split_of.setdefault(t.patient_no, set()).add(t.split)
    assert all(len(s) == 1 for s in split_of.values())
    valid = sum(1 for s in split_of.values() if 'valid' in s) / len(split_of)
    assert 0.15 < valid < 0.25
    assert len(tasks) == 300
    assert any(t.scan_no == 1 for t in tasks), 'some patients have a second scan'
    names = [t.scan_name for t in tasks]
    assert len(set(names)) == len(names)


# How each finding is spoken of; a sentence that matches must be negated when the finding is absent.
TERMS = {
    'Medical material': r'pacemaker|sternotomy|port catheter|surgical clips|medical (device|material)',
    'Arterial wall calcification': r'aort[^.]*(calcif|plaque)|(calcif|atheroscl|atheroma|plaque)[^.]*aort',
    'Cardiomegaly': r'cardiomegaly|heart (size|contour)|heart is enlarged',
    'Pericardial effusion': r'pericardial effusion',
    'Coronary artery wall calcification': r'coronary',
    'Hiatal hernia': r'hiatal hernia',
    'Lymphadenopathy': r'lymph',
    'Emphysema': r'emphysem',
    'Atelectasis': r'atelecta',
    'Lung nodule': r'nodul',
    'Lung opacity': r'ground.glass|opacit',
    'Pulmonary fibrotic sequela': r'fibrotic',
    'Pleural effusion': r'pleural effusion',
    'Mosaic attenuation pattern': r'mosaic',
    'Peribronchial thickening': r'peribronchial|bronchial wall',
    'Consolidation': r'consolidation',
    'Bronchiectasis': r'bronchiectasis',
    'Interlobular septal thickening': r'\bseptal',
}
NEGATION = re.compile(r'\b(no|not|normal|without)\b', re.I)
HEDGE = re.compile(r'cannot be excluded|suspicious|possible|may be compatible', re.I)


def check_report(text: str, present: set[str], certainty: dict[str, str]) -> None:
    """A stated sentence for every positive (hedged iff uncertain); negation or silence otherwise."""
    sentences = [s for s in re.split(r'(?<=[.;])\s+', text) if 'thyroid' not in s.lower()]
    for finding in FINDINGS:
        hits = [s for s in sentences if re.search(TERMS[finding], s, re.I)]
        stated = [s for s in hits if not NEGATION.search(s)]
        if finding not in present:
            assert not stated, f'{finding} is absent but the report states it: {stated}'
            continue
        assert stated, f'{finding} is present but no sentence states it: {text}'
        hedged = [s for s in stated if HEDGE.search(s)]
        if certainty[finding] == 'uncertain':
            assert hedged, f'{finding} is uncertain but stated without a hedge: {stated}'
        else:
            assert not hedged, f'{finding} is certain but hedged: {hedged}'


def test_report_text_agrees_with_labels(cohort):
    _, reports, labels = _tables(cohort)
    truth = _truth(cohort)
    for name, row in reports.items():
        certainty = {f['finding']: f['certainty'] for f in truth[name]['findings']}
        present = {f for f in FINDINGS if labels[name][f] == '1'}
        assert present == set(certainty)
        check_report(row['Findings_EN'] + ' ' + row['Impressions_EN'], present, certainty)
        assert row['Impressions_EN'] and row['Findings_EN']


def test_same_seed_same_bytes_and_workers_do_not_matter(tmp_path):
    a = generate_cohort(tmp_path / 'a', n=2, seed=11, small=True, progress=False)
    b = generate_cohort(tmp_path / 'b', n=2, seed=11, small=True, workers=2, progress=False)
    files_a = sorted(
        p.relative_to(a) for p in a.rglob('*') if p.is_file() and '.synth' not in p.parts
    )
    files_b = sorted(
        p.relative_to(b) for p in b.rglob('*') if p.is_file() and '.synth' not in p.parts
    )
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate_cohort(tmp_path / 'c', n=2, seed=12, small=True, progress=False)
    assert (c / 'truth.jsonl').read_bytes() != (a / 'truth.jsonl').read_bytes()


def test_interrupted_run_leaves_no_partial_file_and_resumes(tmp_path, monkeypatch):
    calls = {'n': 0}
    real = layouts._gzip

    def failing(data: bytes) -> bytes:
        calls['n'] += 1
        if calls['n'] == 3:
            raise RuntimeError('disk full')
        return real(data)

    monkeypatch.setattr(layouts, '_gzip', failing)
    with pytest.raises(RuntimeError, match='disk full'):
        generate_cohort(tmp_path / 'x', n=2, seed=5, small=True, progress=False)
    assert not list((tmp_path / 'x').rglob('.tmp-*'))
    assert not (tmp_path / 'x' / 'truth.jsonl').exists()
    for p in (tmp_path / 'x').rglob('*.nii.gz'):
        nib.load(p).get_fdata()  # every file present is complete
    monkeypatch.setattr(layouts, '_gzip', real)
    generate_cohort(tmp_path / 'x', n=2, seed=5, small=True, progress=False)
    fresh = generate_cohort(tmp_path / 'y', n=2, seed=5, small=True, progress=False)
    assert (tmp_path / 'x' / 'truth.jsonl').read_bytes() == (fresh / 'truth.jsonl').read_bytes()
    for p in fresh.rglob('*.nii.gz'):
        assert p.read_bytes() == (tmp_path / 'x' / p.relative_to(fresh)).read_bytes()


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="layout must be one of .*'ct-rate'"):
        generate_cohort(tmp_path / 'a', n=1, layout='nifti')
    with pytest.raises(ValueError, match='n must be a positive'):
        generate_cohort(tmp_path / 'a', n=0)
    generate_cohort(tmp_path / 'b', n=1, seed=1, small=True, progress=False)
    with pytest.raises(ValueError, match='holds a cohort made with'):
        generate_cohort(tmp_path / 'b', n=1, seed=2, small=True, progress=False)


def test_cli_synth(tmp_path, capsys):
    from ctclip.cli import main

    args = [
        'synth',
        '--out',
        str(tmp_path / 'cli'),
        '--n',
        '1',
        '--seed',
        '4',
        '--small',
        '--no-progress',
    ]
    assert main([*args, '--gallery']) == 0
    assert (tmp_path / 'cli' / 'truth.jsonl').is_file()
    assert (tmp_path / 'cli' / 'gallery.png').stat().st_size > 10_000
    assert 'synthetic cohort written' in capsys.readouterr().out
    victim = next((tmp_path / 'cli').rglob('*_fixed/*/*/*.nii.gz'))
    before = victim.read_bytes()
    victim.unlink()  # a deleted volume is rebuilt by a rerun, byte for byte
    assert main(args) == 0
    assert victim.read_bytes() == before
    with pytest.raises(SystemExit):
        main(['synth', '--help'])


def test_report_rules_hold_for_many_finding_combinations():
    from synth.findings import FindingSampler
    from synth.reports import INCIDENTAL, write_report
    from synth.scan import ScanTask, plan_scan

    plan = plan_scan(
        ScanTask(seed=1, patient_no=0, scan_no=0, split='train', pid=1, n_recons=1, small=True)
    )
    sampler = FindingSampler(np.random.default_rng(0), plan.anat, _placement(plan), plan.tree)
    rng = np.random.default_rng(1)
    for _ in range(150):
        present = {f for f in FINDINGS if rng.random() < 0.25}
        findings = {}
        for name in FINDINGS:
            if name in present:
                findings[name] = sampler.sample(name)
                findings[name].certain = bool(rng.random() > 0.2)
        incidental = [k for k in INCIDENTAL if rng.random() < 0.2]
        report = write_report(findings, incidental, 5.0, rng)
        certainty = {n: 'certain' if f.certain else 'uncertain' for n, f in findings.items()}
        check_report(report['Findings_EN'] + ' ' + report['Impressions_EN'], present, certainty)


def _placement(plan):
    from synth.lungs import PlacementMap

    return PlacementMap(plan.anat)


def test_rad_chestct_layout(tmp_path):
    from synth import radchestct

    root = generate_cohort(
        tmp_path / 'rad', n=3, seed=2, layout='rad-chestct', small=True, progress=False
    )
    base = root / 'radchestct'
    spacing = json.loads((base / 'spacing.json').read_text(encoding='utf-8'))
    assert spacing['spacing_zyx'] == [3.0, 3.0, 3.0]
    raw = {
        r['NoteAcc_DEID']: r
        for name in ('imgtrain.csv', 'imgvalid.csv', 'imgtest.csv')
        for r in _csv(base / name)
    }
    assert len(raw) == 3 and all(re.fullmatch(r'(trn|val|tst)\d{5}', k) for k in raw)
    mapped = {r['NoteAcc_DEID']: r for r in _csv(base / 'rad_chestct_labels.csv')}
    reports = {r['NoteAcc_DEID']: r for r in _csv(base / 'reports.csv')}
    truth = _truth(root)
    assert set(raw) == set(mapped) == set(reports) == set(truth)
    for note, row in raw.items():
        ct = np.load(base / 'volumes' / f'{note}.npz')['ct']
        assert ct.dtype == np.int16 and ct.ndim == 3 and ct.shape == tuple(truth[note]['shape_zyx'])
        assert ct.min() >= -1024 and ct.max() > 300
        assert set(row.values()) - {note} <= {'0.0', '1.0'}
        for name, col in radchestct.HLIP_MAPPED.items():
            assert mapped[note][name] == row[col]
        present = {f['finding'] for f in truth[note]['findings']}
        assert (row['calcification'] == '1.0') == bool(
            present & {'Arterial wall calcification', 'Coronary artery wall calcification'}
        )
        assert (row['emphysema'] == '1.0') == ('Emphysema' in present)


def test_rad_chestct_columns_match_the_real_tables(shared_data):
    from synth import radchestct

    with shared_data('radchestct', 'imgtest.csv').open(encoding='utf-8') as f:
        assert tuple(next(csv.reader(f))) == ('NoteAcc_DEID', *radchestct.RAW_COLUMNS)
    with shared_data('radchestct', 'rad_chestct_labels.csv').open(encoding='utf-8') as f:
        assert tuple(next(csv.reader(f))) == ('NoteAcc_DEID', *radchestct.HLIP_MAPPED)


def test_ctrate_metadata_columns_match_the_real_table(shared_data):
    with shared_data('ctrate', 'validation_metadata.csv').open(encoding='utf-8') as f:
        assert tuple(next(csv.reader(f))) == layouts.METADATA_COLUMNS


def test_written_v2_array_is_the_rendered_lps_volume(cohort):
    from synth.cohort import plan_cohort as plan_tasks
    from synth.scan import plan_scan, render_recon

    task = plan_tasks(N_SCANS, SEED, small=True)[0]
    plan = plan_scan(task)
    hu, _, outside, tissues = render_recon(plan, 0)
    name = task.volume_names()[0]
    image = sitk.ReadImage(str(layouts.ctrate_paths(cohort, name)[1]))
    written = sitk.GetArrayFromImage(image)
    expected = np.clip(np.rint(hu), -1024, 3071)
    expected[outside] = plan.scanner['intercept']
    np.testing.assert_array_equal(written, expected.astype(np.int16))

    # LPS: the heart lies to the patient's left (+x), the spine posterior (+y), the lungs above the liver (+z)
    def centre(mask: np.ndarray) -> np.ndarray:
        index = np.argwhere(mask).mean(0)[::-1].tolist()
        return np.array(image.TransformContinuousIndexToPhysicalPoint(index))

    body, heart, spine = centre(tissues['body']), centre(tissues['heart']), centre(tissues['spine'])
    lung, liver = centre(tissues['lung_r'] | tissues['lung_l']), centre(tissues['liver'])
    assert heart[0] > body[0] + 5 and spine[1] > body[1] + 20 and lung[2] > liver[2] + 50


def test_follow_up_scans_keep_chronic_findings():
    from synth.scan import CHRONIC, plan_scan

    by_patient: dict[int, list] = {}
    for t in plan_cohort(24, seed=0, small=True):
        by_patient.setdefault(t.patient_no, []).append(t)
    pairs = [ts for ts in by_patient.values() if len(ts) == 2]
    assert pairs
    for first, follow_up in pairs:
        a, b = plan_scan(first), plan_scan(follow_up)
        assert b.age == a.age + 2 and b.sex == a.sex
        assert set(a.findings) & CHRONIC == set(b.findings) & CHRONIC
        for name in set(a.findings) & CHRONIC:
            assert repr(a.findings[name].parts) == repr(b.findings[name].parts), name


def test_split_is_stratified_by_finding():
    """Each finding's positive patients split about 80/20, so no class rests on one patient."""
    from synth.scan import scan_presence

    for seed in (0, 1, 2):
        tasks = plan_cohort(200, seed=seed)
        patients: dict[int, tuple[str, set[str]]] = {}
        for t in tasks:
            split, found = patients.get(t.patient_no, (t.split, set()))
            patients[t.patient_no] = (split, found | scan_presence(seed, t.patient_no, t.scan_no))
        assert sum(s == 'valid' for s, _ in patients.values()) == round(0.2 * len(patients))
        for name in FINDINGS:
            splits = [s for s, found in patients.values() if name in found]
            share = splits.count('valid') / len(splits)
            assert 0.12 <= share <= 0.3, (seed, name, splits.count('valid'), len(splits))


def test_presence_known_before_planning_matches_the_plan():
    from synth.scan import plan_scan, scan_presence

    for t in plan_cohort(12, seed=5, small=True):
        assert set(plan_scan(t).findings) == scan_presence(5, t.patient_no, t.scan_no)


def test_pleural_effusion_has_its_reported_depth_at_the_dome():
    from synth.scan import plan_scan, render_recon

    for task in plan_cohort(6, seed=4, small=True)[:3]:
        plan = plan_scan(task, present={'Pleural effusion'})
        fluid = render_recon(plan, 0)[1]['Pleural effusion']
        grid = plan.recons[0]['grid']
        z, y, x = grid.axes()
        for part in plan.findings['Pleural effusion'].parts:
            dome = plan.anat.dome_z[0 if part['side'] < 0 else 1]
            k = int(np.argmin(np.abs(z[:, 0, 0] - dome)))
            on_side = fluid[k] & (np.sign(x[0]) == part['side'])
            ys = np.broadcast_to(y[0], on_side.shape)[on_side]
            depth = ys.max() - ys.min() + grid.spacing_zyx[1]
            # the lung (inside the pleura) ends 3 mm short of the cavity's back wall
            assert part['depth'] - 3 - 2 * grid.spacing_zyx[1] <= depth <= part['depth'] + 2, (
                part,
                depth,
            )


def test_emphysema_extent_follows_the_reported_severity():
    from synth.scan import plan_scan

    holes: dict[tuple[str, str], list[int]] = {}
    for task in plan_cohort(60, seed=6, small=True):
        f = plan_scan(task, present={'Emphysema'}).findings['Emphysema']
        holes.setdefault((f.desc['kind'], f.desc['severity']), []).append(len(f.parts))
    for kind in ('centrilobular', 'paraseptal', 'bullous'):
        means = [
            np.mean(holes[kind, s]) for s in ('mild', 'moderate', 'marked') if (kind, s) in holes
        ]
        assert len(means) >= 2 and means == sorted(means) and means[0] < means[-1], (kind, holes)
