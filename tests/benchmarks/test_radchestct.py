"""RAD-ChestCT mappings on the real label tables (HLIP's mapped tables are the ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import radchestct as R
from benchmarks.tables import Table, read_table
from llm_labeling.schema import FINDINGS
from tests.conftest import shared_path


@pytest.mark.parametrize('split', ['imgtest', 'imgvalid'])
def test_hlip_mapping_reproduces_hlip_tables(split):
    raw = read_table(shared_path('radchestct', f'{split}.csv'))
    mapped = read_table(shared_path('radchestct', f'{split}_16.csv'))
    assert R.is_raw_table(raw) and not R.is_raw_table(mapped)
    ours = R.map_labels(raw, 'hlip')
    assert ours.ids == mapped.ids
    assert sorted(ours.columns) == sorted(mapped.columns) and len(ours.columns) == 15
    assert np.array_equal(ours.select(columns=mapped.columns).values, mapped.values)


def test_hlip_mapping_matches_combined_table_rows():
    raw = read_table(shared_path('radchestct', 'imgtest.csv'))
    combined = read_table(shared_path('radchestct', 'rad_chestct_labels.csv'))
    ours = R.map_labels(raw, 'hlip')
    assert np.array_equal(combined.select(ids=raw.ids, columns=ours.columns).values, ours.values)


def test_ctclip16_on_real_rows():
    raw = read_table(shared_path('radchestct', 'imgtest.csv'))
    labels = R.map_labels(raw, 'ctclip16')
    assert len(labels.columns) == 16
    assert 'Mosaic attenuation pattern' not in labels.columns
    assert labels.columns[:2] == ['Medical material', 'Calcification']
    assert np.array_equal(labels.column('Calcification'), raw.column('calcification'))
    assert np.array_equal(labels.column('Lymphadenopathy'), raw.column('lymphadenopathy'))
    devices = raw.select(columns=list(R.MEDICAL_MATERIAL_COLUMNS)).values.max(1)
    assert np.array_equal(labels.column('Medical material'), devices)
    # first real row (tst34780): nodule and opacity, no calcification
    row = dict(zip(labels.columns, labels.values[0], strict=True))
    assert labels.ids[0] == 'tst34780' and row['Lung nodule'] == 1 and row['Calcification'] == 0


def test_hlip14_from_mapped_table_merges_calcification():
    mapped = read_table(shared_path('radchestct', 'imgtest_16.csv'))
    labels = R.map_labels(mapped, 'hlip14')
    assert labels.columns[-1] == 'Calcification' and len(labels.columns) == 14
    with pytest.raises(ValueError, match="Medical material' of mapping 'ctclip16'"):
        R.map_labels(mapped, 'ctclip16')  # HLIP's tables carry no Medical material


def test_map_scores_takes_max_of_calcifications():
    scores = np.tile(np.linspace(0, 1, 18), (2, 1))
    table = Table(['a', 'b'], list(FINDINGS), scores)
    out = R.map_scores(table, 'ctclip16')
    arterial = scores[0, FINDINGS.index('Arterial wall calcification')]
    coronary = scores[0, FINDINGS.index('Coronary artery wall calcification')]
    assert out.column('Calcification')[0] == max(arterial, coronary)
    assert out.column('Emphysema')[0] == scores[0, FINDINGS.index('Emphysema')]


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match="one of \\['ctclip16', 'hlip', 'hlip14'\\]"):
        R.get_mapping('merlin')
    assert R.split_of('tst34780') == 'test'
    with pytest.raises(ValueError, match='must start with one of'):
        R.split_of('abc')
