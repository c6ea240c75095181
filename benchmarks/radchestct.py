"""RAD-ChestCT -> CT-RATE class mappings (the one home of them; see docs/benchmarks.md).

RAD-ChestCT labels 84 abnormalities; a CT-RATE model scores 18 findings. Two published mappings
are in use and give different numbers, so a report always names the one it used:

- `ctclip16`: CT-CLIP's external validation. Mosaic attenuation is dropped; Arterial wall and
  Coronary artery wall calcification are scored together as max(p_arterial, p_coronary) against
  RAD's single `calcification` label; Medical material and Lymphadenopathy are kept.
- `hlip`: HLIP's mapped tables (`imgtest_16.csv`, `rad_chestct_labels.csv`): 15 CT-RATE classes,
  each calcification class scored on its own against RAD's `calcification`.
- `hlip14`: the same classes with the two calcifications merged as in CT-CLIP (14 classes).

CT-CLIP does not publish which RAD columns form "Medical material"; ours is the union of the
device and implant columns below (`MEDICAL_MATERIAL_COLUMNS`), stated in every report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.tables import Table
from llm_labeling.schema import FINDINGS

ID_COLUMN = 'NoteAcc_DEID'
SPLIT_PREFIXES = {'trn': 'train', 'val': 'valid', 'tst': 'test'}
MEDICAL_MATERIAL_COLUMNS = (
    'breast_implant',
    'catheter_or_port',
    'chest_tube',
    'clip',
    'gi_tube',
    'hardware',
    'heart_valve_replacement',
    'pacemaker_or_defib',
    'staple',
    'stent',
    'suture',
    'tracheal_tube',
)
CALCIFICATION = ('Arterial wall calcification', 'Coronary artery wall calcification')


@dataclass(frozen=True)
class MappedClass:
    """One evaluated class: its label is max over RAD columns, its score max over CT-RATE classes."""

    name: str
    rad_columns: tuple[str, ...]
    score_classes: tuple[str, ...]


@dataclass(frozen=True)
class Mapping:
    name: str
    description: str
    classes: tuple[MappedClass, ...]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def as_dict(self) -> dict:
        return {
            'name': self.name,
            'description': self.description,
            'classes': {
                c.name: {'rad_columns': list(c.rad_columns), 'score_classes': list(c.score_classes)}
                for c in self.classes
            },
        }


def _one(name: str, *rad: str) -> MappedClass:
    return MappedClass(name, tuple(rad), (name,))


_SHARED = (
    _one('Emphysema', 'emphysema'),
    _one('Atelectasis', 'atelectasis'),
    _one('Lung nodule', 'nodule'),
    _one('Lung opacity', 'opacity'),
    _one('Pulmonary fibrotic sequela', 'fibrosis'),
    _one('Pleural effusion', 'pleural_effusion'),
    _one('Peribronchial thickening', 'bronchial_wall_thickening'),
    _one('Consolidation', 'consolidation'),
    _one('Bronchiectasis', 'bronchiectasis'),
    _one('Interlobular septal thickening', 'septal_thickening'),
    _one('Cardiomegaly', 'cardiomegaly'),
    _one('Pericardial effusion', 'pericardial_effusion'),
    _one('Hiatal hernia', 'hernia'),
)
_MERGED_CALC = MappedClass('Calcification', ('calcification',), CALCIFICATION)


def _ctclip16() -> tuple[MappedClass, ...]:
    """CT-CLIP's order: FINDINGS without Mosaic, calcifications merged at Arterial's place."""
    by_name = {c.name: c for c in _SHARED}
    by_name['Medical material'] = MappedClass(
        'Medical material', MEDICAL_MATERIAL_COLUMNS, ('Medical material',)
    )
    by_name['Lymphadenopathy'] = _one('Lymphadenopathy', 'lymphadenopathy')
    out = []
    for finding in FINDINGS:
        if finding == 'Arterial wall calcification':
            out.append(_MERGED_CALC)
        elif finding in by_name:
            out.append(by_name[finding])
    return tuple(out)


MAPPINGS: dict[str, Mapping] = {
    'ctclip16': Mapping(
        'ctclip16',
        "CT-CLIP's 16 classes: no Mosaic attenuation; calcification = max(p_arterial, p_coronary)",
        _ctclip16(),
    ),
    'hlip': Mapping(
        'hlip',
        "HLIP's 15 mapped classes; each calcification class scored against RAD calcification",
        _SHARED + tuple(MappedClass(c, ('calcification',), (c,)) for c in reversed(CALCIFICATION)),
    ),
    'hlip14': Mapping(
        'hlip14',
        "HLIP's classes with the calcifications merged: max(p_arterial, p_coronary)",
        _SHARED + (_MERGED_CALC,),
    ),
}


def get_mapping(name: str) -> Mapping:
    if name not in MAPPINGS:
        raise ValueError(f'RAD-ChestCT mapping must be one of {sorted(MAPPINGS)}, not {name!r}')
    return MAPPINGS[name]


def is_raw_table(table: Table) -> bool:
    """Raw tables carry RAD's own column names (84 abnormalities), mapped ones CT-RATE names."""
    return 'nodule' in table.columns and 'Lung nodule' not in table.columns


def map_labels(table: Table, mapping: Mapping | str) -> Table:
    """Labels of the mapping's classes from a raw RAD table or an already-mapped (HLIP) table.

    In a raw table a class is positive when any of its RAD columns is; a mapped table must hold
    the class itself, or for a merged class any of the CT-RATE classes it merges.
    """
    mapping = get_mapping(mapping) if isinstance(mapping, str) else mapping
    raw = is_raw_table(table)
    columns = []
    for cls in mapping.classes:
        wanted = (
            cls.rad_columns
            if raw
            else ((cls.name,) if cls.name in table.columns else cls.score_classes)
        )
        present = [c for c in wanted if c in table.columns]
        if (raw and len(present) != len(wanted)) or not present:
            kind = 'raw RAD-ChestCT' if raw else 'mapped'
            raise ValueError(
                f'{table.source}: the {kind} label table lacks {sorted(set(wanted) - set(present))} '
                f"needed for class {cls.name!r} of mapping '{mapping.name}'"
            )
        columns.append(_max_ignoring_nan(table.select(columns=present).values))
    return Table(table.ids, mapping.class_names, np.stack(columns, 1), table.source)


def _max_ignoring_nan(block: np.ndarray) -> np.ndarray:
    """Row-wise max over the non-empty cells; NaN where every cell is empty."""
    top = np.where(np.isnan(block), -np.inf, block).max(axis=1)
    return np.where(np.isinf(top), np.nan, top)


def map_scores(scores: Table, mapping: Mapping | str) -> Table:
    """Per-class scores of the mapping from scores over CT-RATE's FINDINGS (max over merged classes)."""
    mapping = get_mapping(mapping) if isinstance(mapping, str) else mapping
    columns = []
    for cls in mapping.classes:
        missing = [c for c in cls.score_classes if c not in scores.columns]
        if missing:
            raise ValueError(
                f'{scores.source}: scores lack {missing} needed for class {cls.name!r}'
            )
        columns.append(scores.select(columns=list(cls.score_classes)).values.max(axis=1))
    return Table(scores.ids, mapping.class_names, np.stack(columns, 1), scores.source)


def split_of(note_acc: str) -> str:
    """RAD-ChestCT split from the id prefix (trn/val/tst)."""
    prefix = note_acc[:3]
    if prefix not in SPLIT_PREFIXES:
        raise ValueError(
            f'RAD-ChestCT id must start with one of {sorted(SPLIT_PREFIXES)}, not {note_acc!r}'
        )
    return SPLIT_PREFIXES[prefix]
