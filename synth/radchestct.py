"""RAD-ChestCT layout: `.npz` volumes, the 84-column label tables, and HLIP's mapped table.

The raw columns are RAD-ChestCT's own abnormality names. Our findings set the raw columns a
radiologist's note would trigger (e.g. a pacemaker sets `pacemaker_or_defib`); HLIP's mapped
table is then derived from the raw columns exactly as HLIP derives it.
"""

from __future__ import annotations

from pathlib import Path

from ctcommon.atomic import write_json
from ctcommon.findings import FINDINGS
from synth import layouts

RAW_COLUMNS = (
    'air_trapping',
    'airspace_disease',
    'aneurysm',
    'arthritis',
    'aspiration',
    'atelectasis',
    'atherosclerosis',
    'bandlike_or_linear',
    'breast_implant',
    'breast_surgery',
    'bronchial_wall_thickening',
    'bronchiectasis',
    'bronchiolectasis',
    'bronchiolitis',
    'bronchitis',
    'cabg',
    'calcification',
    'cancer',
    'cardiomegaly',
    'catheter_or_port',
    'cavitation',
    'chest_tube',
    'clip',
    'congestion',
    'consolidation',
    'coronary_artery_disease',
    'cyst',
    'debris',
    'deformity',
    'density',
    'dilation_or_ectasia',
    'distention',
    'emphysema',
    'fibrosis',
    'fracture',
    'gi_tube',
    'granuloma',
    'groundglass',
    'hardware',
    'heart_failure',
    'heart_valve_replacement',
    'hemothorax',
    'hernia',
    'honeycombing',
    'infection',
    'infiltrate',
    'inflammation',
    'interstitial_lung_disease',
    'lesion',
    'lucency',
    'lung_resection',
    'lymphadenopathy',
    'mass',
    'mucous_plugging',
    'nodule',
    'nodulegr1cm',
    'opacity',
    'other_path',
    'pacemaker_or_defib',
    'pericardial_effusion',
    'pericardial_thickening',
    'plaque',
    'pleural_effusion',
    'pleural_thickening',
    'pneumonia',
    'pneumonitis',
    'pneumothorax',
    'postsurgical',
    'pulmonary_edema',
    'reticulation',
    'scarring',
    'scattered_calc',
    'scattered_nod',
    'secretion',
    'septal_thickening',
    'soft_tissue',
    'staple',
    'stent',
    'sternotomy',
    'suture',
    'tracheal_tube',
    'transplant',
    'tree_in_bud',
    'tuberculosis',
)

# Raw RAD-ChestCT columns set by each of our findings (the first one is the primary term).
RAW_FROM_FINDING = {
    'Arterial wall calcification': ('calcification', 'atherosclerosis'),
    'Coronary artery wall calcification': ('calcification', 'coronary_artery_disease'),
    'Cardiomegaly': ('cardiomegaly',),
    'Pericardial effusion': ('pericardial_effusion',),
    'Hiatal hernia': ('hernia',),
    'Lymphadenopathy': ('lymphadenopathy',),
    'Emphysema': ('emphysema',),
    'Atelectasis': ('atelectasis',),
    'Lung nodule': ('nodule',),
    'Lung opacity': ('opacity', 'groundglass'),
    'Pulmonary fibrotic sequela': ('fibrosis', 'scarring'),
    'Pleural effusion': ('pleural_effusion',),
    'Mosaic attenuation pattern': ('air_trapping',),
    'Peribronchial thickening': ('bronchial_wall_thickening',),
    'Consolidation': ('consolidation', 'opacity'),
    'Bronchiectasis': ('bronchiectasis',),
    'Interlobular septal thickening': ('septal_thickening',),
}
DEVICE_COLUMNS = {
    'pacemaker': ('pacemaker_or_defib',),
    'port catheter': ('catheter_or_port',),
    'sternotomy wires': ('sternotomy', 'postsurgical'),
    'surgical clips': ('clip', 'postsurgical'),
}
# HLIP's mapping of raw columns onto CT-RATE names (both calcification classes read `calcification`).
HLIP_MAPPED = {
    'Emphysema': 'emphysema',
    'Atelectasis': 'atelectasis',
    'Lung nodule': 'nodule',
    'Lung opacity': 'opacity',
    'Pulmonary fibrotic sequela': 'fibrosis',
    'Pleural effusion': 'pleural_effusion',
    'Peribronchial thickening': 'bronchial_wall_thickening',
    'Consolidation': 'consolidation',
    'Bronchiectasis': 'bronchiectasis',
    'Interlobular septal thickening': 'septal_thickening',
    'Cardiomegaly': 'cardiomegaly',
    'Pericardial effusion': 'pericardial_effusion',
    'Hiatal hernia': 'hernia',
    'Coronary artery wall calcification': 'calcification',
    'Arterial wall calcification': 'calcification',
}
SPLIT_FILES = {'trn': 'imgtrain.csv', 'val': 'imgvalid.csv', 'tst': 'imgtest.csv'}
SMALL_SPACING = 3.0
FULL_SPACING = 0.8


def root(out: Path) -> Path:
    return Path(out) / 'radchestct'


def volume_path(out: Path, note_id: str) -> Path:
    return root(out) / 'volumes' / f'{note_id}.npz'


def raw_row(note_id: str, truth: dict) -> dict:
    """The 84 raw RAD-ChestCT columns (0.0 / 1.0) for one volume's truth line."""
    row = dict.fromkeys(RAW_COLUMNS, 0.0)
    for item in truth['findings']:
        name = item['finding']
        cols = (
            DEVICE_COLUMNS[item['description']['kind']]
            if name == 'Medical material'
            else RAW_FROM_FINDING[name]
        )
        for col in cols:
            row[col] = 1.0
        if name == 'Lung nodule' and item['description'].get('size', 0) >= 10:
            row['nodulegr1cm'] = 1.0
    return {'NoteAcc_DEID': note_id, **row}


def assemble(out: Path, records: list[dict], small: bool) -> None:
    base = root(out)
    raw = {prefix: [] for prefix in SPLIT_FILES}
    mapped, reports = [], []
    for rec in records:
        for truth, report in zip(rec['truth'], rec['reports'], strict=False):
            note = truth['volume']
            row = raw_row(note, truth)
            raw[note[:3]].append(row)
            mapped.append({'NoteAcc_DEID': note, **{k: row[v] for k, v in HLIP_MAPPED.items()}})
            reports.append(report)
    for prefix, name in SPLIT_FILES.items():
        layouts.write_csv(base / name, ('NoteAcc_DEID', *RAW_COLUMNS), raw[prefix])
    layouts.write_csv(base / 'rad_chestct_labels.csv', ('NoteAcc_DEID', *HLIP_MAPPED), mapped)
    layouts.write_csv(base / 'reports.csv', ('NoteAcc_DEID', *layouts.REPORT_COLUMNS), reports)
    labels = [
        {'VolumeName': r['VolumeName'], **{f: lab for f, lab in r.items() if f in FINDINGS}}
        for rec in records
        for r in rec['labels']
    ]
    layouts.write_csv(base / 'ctrate_labels.csv', ('VolumeName', *FINDINGS), labels)
    spacing = SMALL_SPACING if small else FULL_SPACING
    write_json(
        base / 'spacing.json',
        {'spacing_zyx': [spacing] * 3, 'orientation': 'LPS', 'units': 'HU'},
        newline=False,
        indent=None,
    )
