"""What an LLM must return, validated: one fixed field per finding, quotes checked against the report.

A fixed field per finding (instead of a free list) keeps small models from looping, and makes a
grammar-constrained server emit all 18 answers. The quote validator reads the report text from the
pydantic validation context; when it fails, instructor re-asks with the error message.
"""

from __future__ import annotations

import contextvars
import re

from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from llm_labeling.schema import (
    FINDINGS,
    Descriptors,
    FindingEvidence,
    Location,
    ReportAnnotation,
    Status,
)

RESPONSE_SCHEMA_VERSION = '1'
# The report being validated. A context variable rather than instructor's `context=`, which would
# also render every message as a Jinja template (slow, and wrong for a report containing '{{').
# Each asyncio task, and asyncio.to_thread, works on its own copy.
REPORT_TEXT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    'report_text', default=None
)
_MENTIONED = (Status.PRESENT, Status.UNCERTAIN)
_WS = re.compile(r'\s+')
_QUOTE_STRIP = ' \t\n\'"“”‘’`.…'


def field_name(finding: str) -> str:
    """'Lung opacity' -> 'lung_opacity': a JSON key a model can copy without spaces."""
    return re.sub(r'[^a-z0-9]+', '_', finding.lower()).strip('_')


FIELD_NAMES: dict[str, str] = {finding: field_name(finding) for finding in FINDINGS}


def find_quote(quote: str, text: str) -> str | None:
    """The exact span of `text` that `quote` names, forgiving case, spacing and wrapping quotes."""
    if quote in text:
        return quote
    core = quote.strip(_QUOTE_STRIP)
    if not core:
        return None
    if core in text:
        return core
    words = [re.escape(w) for w in _WS.split(core) if w]
    match = re.search(r'\s+'.join(words), text, flags=re.IGNORECASE)
    return match.group(0) if match else None


class FindingAnswer(BaseModel):
    """How the report speaks of one finding, with its own words."""

    status: Status
    quote: str | None = Field(
        None, description='the exact words of the report that state this finding'
    )
    location: Location | None = None
    descriptors: Descriptors | None = None

    @field_validator('quote')
    @classmethod
    def _quote_in_report(cls, quote: str | None, info: ValidationInfo) -> str | None:
        text = (info.context or {}).get('report_text', REPORT_TEXT.get())
        if quote is None or text is None:
            return quote
        exact = find_quote(quote, text)
        if exact is None:
            raise ValueError(
                f'quote {quote!r} is not an exact substring of the report; copy the words '
                'character for character, or use null'
            )
        return exact

    def evidence(self, finding: str) -> FindingEvidence:
        quote = None if self.status == Status.NOT_MENTIONED else self.quote
        return FindingEvidence(
            finding=finding,
            status=self.status,
            quote=quote,
            location=self.location or Location(),
            descriptors=self.descriptors or Descriptors(),
        )


def _quote_required(self: BaseModel) -> BaseModel:
    missing = [
        name
        for name in FIELD_NAMES.values()
        if getattr(self, name).status in _MENTIONED and not getattr(self, name).quote
    ]
    if missing:
        raise ValueError(
            f'present or uncertain findings need a quote from the report: {", ".join(missing)}'
        )
    return self


def _build_model() -> type[BaseModel]:
    fields = {
        FIELD_NAMES[f]: (FindingAnswer, Field(..., description=f'CT-RATE label: {f}'))
        for f in FINDINGS
    }
    model = create_model(
        'ReportFindings',
        __doc__='The 18 CT-RATE findings of one chest CT report, each with its evidence.',
        __validators__={'quote_required': model_validator(mode='after')(_quote_required)},
        **fields,
    )
    return model


ReportFindings: type[BaseModel] = _build_model()


def to_annotation(response: BaseModel, report_id: str) -> ReportAnnotation:
    """Keep the mentioned findings (status other than not_mentioned) as evidence items."""
    items = []
    for finding, name in FIELD_NAMES.items():
        answer: FindingAnswer = getattr(response, name)
        if answer.status != Status.NOT_MENTIONED:
            items.append(answer.evidence(finding))
    return ReportAnnotation(report_id=report_id, findings=items)


_LI_VALUE = re.compile(r'-?\d+')
_LI_STATUS = {1: Status.PRESENT, -1: Status.UNCERTAIN}


def parse_one_line(content: str) -> list[int]:
    """The last line of `content` holding exactly 18 values in {1, 0, -1} (Li et al.'s format)."""
    for line in reversed((content or '').strip().splitlines()):
        values = [int(v) for v in _LI_VALUE.findall(line)]
        if len(values) == len(FINDINGS) and set(values) <= {-1, 0, 1}:
            return values
    raise ValueError(
        f'expected one line of {len(FINDINGS)} comma-separated values in {{1, 0, -1}}, '
        f'not {content!r:.200}'
    )


def one_line_annotation(values: list[int], report_id: str) -> ReportAnnotation:
    """A one-line answer has no quotes; its positives and uncertains become evidence items."""
    items = [
        FindingEvidence(finding=f, status=_LI_STATUS[v])
        for f, v in zip(FINDINGS, values, strict=True)
        if v in _LI_STATUS
    ]
    return ReportAnnotation(report_id=report_id, findings=items)
