"""Report readers: CT-RATE placeholders, chosen columns, JSONL, clear errors, atomic writes."""

from __future__ import annotations

import csv
import json

import pytest

from llm_labeling.io import atomic_open, read_reports, unique_texts
from tests.llm_labeling.helpers import REPORTS


def test_ctrate_csv_joins_sections_and_drops_placeholders(ctrate_csv):
    reports = read_reports(ctrate_csv)
    assert [r.report_id for r in reports] == [row[0] for row in REPORTS]
    assert reports[0].text == 'Heart size is normal. No pleural effusion.'
    assert reports[2].text == 'A 6 mm nodule in the right upper lobe.\nPulmonary nodule.'
    assert 'Not given' not in ''.join(r.text for r in reports)


def test_identical_texts_group(ctrate_csv):
    groups = unique_texts(read_reports(ctrate_csv))
    assert len(groups) == 4
    assert groups['Heart size is normal. No pleural effusion.'] == [
        'valid_1_a_1.nii.gz',
        'valid_1_a_2.nii.gz',
    ]


def test_manual_labels_layout_is_recognised(tmp_path):
    path = tmp_path / 'manual.csv'
    with path.open('w', newline='', encoding='utf-8') as f:
        csv.writer(f).writerows(
            [['AccessionNo', 'report_text', 'Cardiomegaly'], ['train_1', 'Heart is big. "', '1']]
        )
    (report,) = read_reports(path)
    assert (report.report_id, report.text) == ('train_1', 'Heart is big. "')


def test_chosen_columns_and_jsonl(tmp_path):
    path = tmp_path / 'r.jsonl'
    rows = [{'sid': 's1', 'a': 'One.', 'b': 'Two.'}, {'sid': 's2', 'a': 'Three.', 'b': None}]
    path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n\n', encoding='utf-8')
    reports = read_reports(path, id_column='sid', text_columns=['a', 'b'])
    assert [(r.report_id, r.text) for r in reports] == [('s1', 'One.\nTwo.'), ('s2', 'Three.')]


def test_errors_name_the_file_and_the_problem(tmp_path, ctrate_csv):
    with pytest.raises(ValueError, match=r'column\(s\) Nope not found; columns are: VolumeName'):
        read_reports(ctrate_csv, text_columns=['Nope'])
    odd = tmp_path / 'odd.csv'
    odd.write_text('x,y\n1,2\n', encoding='utf-8')
    with pytest.raises(ValueError, match='odd.csv: cannot tell which column holds the report id'):
        read_reports(odd)
    dup = tmp_path / 'dup.csv'
    dup.write_text('report_id,text\na,one\na,two\n', encoding='utf-8')
    with pytest.raises(ValueError, match="line 3: report id 'a' already appeared on line 2"):
        read_reports(dup)
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"report_id": "a", "text": "x"}\n{oops\n', encoding='utf-8')
    with pytest.raises(ValueError, match='bad.jsonl, line 2: not valid JSON'):
        read_reports(bad)
    with pytest.raises(FileNotFoundError, match='missing.csv'):
        read_reports(tmp_path / 'missing.csv')
    with pytest.raises(ValueError, match="format must be one of auto, csv, jsonl, not 'xml'"):
        read_reports(ctrate_csv, fmt='xml')


def test_atomic_open_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / 'labels.csv'
    target.write_text('old', encoding='utf-8')
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write('half')
            raise RuntimeError('killed')
    assert target.read_text(encoding='utf-8') == 'old'
    assert list(tmp_path.iterdir()) == [target]
    with atomic_open(target) as f:
        f.write('new')
    assert target.read_text(encoding='utf-8') == 'new'
    assert target.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600
