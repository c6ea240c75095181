"""The LLM response schema: a field per finding, quotes checked against the report, Li's one line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llm_labeling.fake_server import all_not_mentioned
from llm_labeling.responses import (
    FIELD_NAMES,
    REPORT_TEXT,
    ReportFindings,
    find_quote,
    one_line_annotation,
    parse_one_line,
    to_annotation,
)
from llm_labeling.schema import FINDINGS

TEXT = 'There is a 6 mm nodule in the right upper lobe.\nNo pleural effusion.'


def validate(answer: dict):
    return ReportFindings.model_validate(answer, context={'report_text': TEXT})


def test_one_required_field_per_finding():
    schema = ReportFindings.model_json_schema()
    assert schema['required'] == list(FIELD_NAMES.values())
    assert len(FIELD_NAMES) == len(FINDINGS) == 18
    with pytest.raises(ValidationError):
        validate({'lung_nodule': {'status': 'present', 'quote': '6 mm nodule'}})


def test_quotes_must_come_from_the_report():
    answer = all_not_mentioned()
    answer['lung_nodule'] = {'status': 'present', 'quote': '"a 6 MM nodule"'}
    answer['pleural_effusion'] = {'status': 'absent', 'quote': 'No pleural effusion'}
    annotation = to_annotation(validate(answer), 'r1')
    assert [(f.finding, f.status.value, f.quote) for f in annotation.findings] == [
        ('Lung nodule', 'present', 'a 6 mm nodule'),
        ('Pleural effusion', 'absent', 'No pleural effusion'),
    ]
    assert annotation.labels()['Lung nodule'] == 1
    answer['lung_nodule'] = {'status': 'present', 'quote': 'a 9 cm liver mass'}
    with pytest.raises(ValidationError, match='not an exact substring of the report'):
        validate(answer)


def test_present_needs_a_quote():
    answer = all_not_mentioned()
    answer['cardiomegaly'] = {'status': 'uncertain'}
    with pytest.raises(ValidationError, match='need a quote from the report: cardiomegaly'):
        validate(answer)


def test_report_text_from_the_context_variable():
    answer = all_not_mentioned()
    answer['lung_nodule'] = {'status': 'present', 'quote': 'not there'}
    token = REPORT_TEXT.set(TEXT)
    try:
        with pytest.raises(ValidationError):
            ReportFindings.model_validate(answer)
    finally:
        REPORT_TEXT.reset(token)


def test_find_quote_spans_line_breaks():
    assert find_quote('lobe. no pleural', TEXT) == 'lobe.\nNo pleural'
    assert find_quote('...', TEXT) is None


def test_parse_one_line():
    values = [1, 0, -1] + [0] * 15
    content = 'Labels:\n' + ', '.join(map(str, values))
    assert parse_one_line(content) == values
    annotation = one_line_annotation(values, 'r')
    assert annotation.labels()['Medical material'] == 1
    assert annotation.labels()['Cardiomegaly'] == -1
    for bad in ('1,0,1', ','.join(['2'] * 18), ''):
        with pytest.raises(ValueError, match='18 comma-separated values'):
            parse_one_line(bad)
