"""A deterministic, negation- and uncertainty-aware labeler for chest-CT reports (no LLM).

It is the offline default backend and the baseline every LLM run is compared against. A report is
cut into sentences and clauses; each finding's trigger patterns (`llm_labeling.lexicon`) are matched
per clause, and the clause's negation and uncertainty cues decide the status. The deciding clause is
returned verbatim as the evidence quote, so every quote is an exact substring of the input.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llm_labeling import lexicon
from llm_labeling.schema import (
    FINDINGS,
    Descriptors,
    FindingEvidence,
    Location,
    ReportAnnotation,
    Status,
)

_logger = logging.getLogger(__name__)

_FLAGS = re.IGNORECASE
_GROUP = re.compile(r'\(\?P<\w+>')
_RANK = {Status.PRESENT: 3, Status.UNCERTAIN: 2, Status.ABSENT: 1}

# Sentence ends, impression bullets (CT-RATE's `"`, curly quotes, `•`) and line breaks.
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+|\s*["\u201c\u201d\u2022]+\s*|\n+|(?<=[a-z])\.(?=[A-Z])')
_TRIM = ' \t\r\n.,;:-"\'\u201c\u201d\u2022·'

_SIDE = re.compile(r'\b(bilateral\w*|both|right|left)\b', _FLAGS)
_REGION = re.compile(
    r'\b(?:(?:right|left)\s+(?:lung\s+)?)?(?:upper|middle|lower)\s+lob\w*'
    r'(?:\s+(?:apical|apicoposterior|anterior|posterior|superior|lateral|medial|(?:postero|antero|latero|medio)?basal)\s+segments?)?'
    r'|\b(?:apical|apicoposterior|anterior|posterior|superior|lateral|medial|(?:postero|antero|latero|medio)?basal)\s+segments?'
    r'(?:\s+of\s+(?:the\s+)?(?:(?:right|left)\s+)?(?:lung\s+)?(?:upper|middle|lower)\s+lob\w*)?'
    r'|\blingul\w*|\b(?:lung\s+)?(?:apex|apices|bases)\b',
    _FLAGS,
)
_STRUCTURE = re.compile(
    r'\b(?:ascending aorta|descending aorta|aortic arch|arcus aorta|abdominal aorta|aort\w*'
    r'|coronary arter\w*|coronary|pericardi\w*|heart|mediastin\w*|hil(?:ar|um|a)\b|prevascular'
    r'|paratracheal|subcarinal|axilla\w*|supraclavicular|pleura\w*|esophag\w+|hiatus|trachea'
    r'|bronch\w*|carotid\w*|subclavian|brachiocephalic|superior vena cava|vena cava|jugular)',
    _FLAGS,
)
_LOCATIVE_INTRO = re.compile(r'(?:in|at|on|within|along)\s+(?:the\s+)?\S', _FLAGS)
_SIZE = re.compile(
    r'\b\d+(?:[.,]\d+)?(?:\s*[x×*]\s*\d+(?:[.,]\d+)?)*\s*(?:mm|cm)\b',
    _FLAGS,
)
_SEVERITY = re.compile(
    r'\b(minimal|mild|slight|minor|moderate|marked|severe|significant|prominent|advanced|'
    r'intense|massive|small|large|millimetric|thin)\b',
    _FLAGS,
)
_EXTENT = re.compile(
    r'\b(diffuse|focal|multifocal|widespread|patchy|scattered|localized|segmental|subsegmental|'
    r'lobar|extensive|multiple|peripheral|centrilobular|paraseptal|panlobular|subpleural|linear|'
    r'nodular)\b',
    _FLAGS,
)
_BILATERAL = re.compile(r'\b(bilateral(?:ly)?)\b', _FLAGS)
# A question in parentheses ("... pattern (small airway disease?)") doubts a cause, not the finding
# outside it. The second form is an aside the sentence splitter cut open ("atelectasis?)").
_ASIDE = re.compile(r'\([^()]*\?[^()]*(?:\)|$)|^[^()]*\?\s*\)')


@dataclass(frozen=True)
class _Clause:
    start: int
    end: int
    text: str
    lead: int = 0  # where the clause proper starts after a verbless opener ("In the hila, ...")


@dataclass(frozen=True)
class _Mention:
    finding: str
    status: Status
    clause: _Clause
    start: int  # of the trigger match, relative to the clause
    end: int


class _CompiledLexicon:
    """The lexicon's regular expressions, compiled once per labeler."""

    def __init__(self) -> None:
        self.triggers = {
            name: [re.compile(p, _FLAGS) for p in lexicon.LEXICON[name].triggers]
            for name in FINDINGS
        }
        self.excludes = {
            name: [re.compile(p, _FLAGS) for p in lexicon.LEXICON[name].excludes]
            for name in FINDINGS
        }
        # One union per finding, searched once per report, skips findings a report never names.
        self.gates = {
            name: re.compile(
                '|'.join(_GROUP.sub('(?:', p) for p in lexicon.LEXICON[name].triggers), _FLAGS
            )
            for name in FINDINGS
        }
        self.pseudo_neg = re.compile('|'.join(lexicon.PSEUDO_NEGATION), _FLAGS)
        self.neg_pre = re.compile('|'.join(lexicon.NEGATION_PRE), _FLAGS)
        self.neg_post = re.compile('|'.join(lexicon.NEGATION_POST), _FLAGS)
        self.neg_post_strong = re.compile('|'.join(lexicon.NEGATION_POST_STRONG), _FLAGS)
        self.uncertain = re.compile('|'.join(lexicon.UNCERTAINTY), _FLAGS)
        self.hedge_negated = re.compile('|'.join(lexicon.UNCERTAINTY_NEGATED), _FLAGS)
        self.verb = re.compile(lexicon.VERB_PHRASE, _FLAGS)
        self.clause_break = re.compile(lexicon.CLAUSE_BREAK, _FLAGS)


def _segments(text: str, pattern: re.Pattern, offset: int = 0) -> list[tuple[int, int]]:
    """Cut `text` at the matches of `pattern`; spans are trimmed and absolute (plus `offset`)."""
    spans, last = [], 0
    for match in pattern.finditer(text):
        spans.append((last, match.start()))
        last = match.end()
    spans.append((last, len(text)))
    out = []
    for start, end in spans:
        while start < end and text[start] in _TRIM:
            start += 1
        while end > start and text[end - 1] in _TRIM:
            end -= 1
        if end > start:
            out.append((start + offset, end + offset))
    return out


def _veto_span(match: re.Match) -> tuple[int, int]:
    """An exclusion vetoes its named group `x` when it has one, else its whole match."""
    return match.span('x') if 'x' in match.re.groupindex else match.span()


def _overlaps(span: tuple[int, int], others: Iterable[tuple[int, int]]) -> bool:
    return any(span[0] < b and a < span[1] for a, b in others)


def _fingerprint() -> str:
    """Hash of the lexicon and of this module's source: any rule or code change gives a new version."""
    digest = hashlib.sha256(lexicon.lexicon_fingerprint().encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:12]


class RulesLabeler:
    """Labels a report with the 18 CT-RATE findings and quotes the clause that decided each one.

    Deterministic and stateless apart from compiled patterns; `version` changes whenever the
    lexicon or the matching code changes, so caches keyed on it stay valid.

    Example:
        >>> ann = RulesLabeler().annotate('r1', 'No pleural effusion. Bilateral atelectasis.')
        >>> ann.labels()['Atelectasis'], ann.labels()['Pleural effusion']
        (1, 0)
    """

    version: str = 'rules-' + _fingerprint()

    def __init__(self) -> None:
        self._lex = _CompiledLexicon()

    def annotate(self, report_id: str, text: str) -> ReportAnnotation:
        """All findings the report mentions, each with status, quote, location and descriptors."""
        if not isinstance(text, str):
            message = f'Report text of {report_id!r} must be a string, not {type(text).__name__}'
            raise TypeError(message)
        best: dict[str, _Mention] = {}
        named = [name for name in FINDINGS if self._lex.gates[name].search(text)]
        for clause in self._clauses(text) if named else ():
            for mention in self._mentions(clause, named):
                kept = best.get(mention.finding)
                if kept is None or _RANK[mention.status] > _RANK[kept.status]:
                    best[mention.finding] = mention
        findings = [self._evidence(best[name]) for name in FINDINGS if name in best]
        return ReportAnnotation(report_id=str(report_id), findings=findings)

    def annotate_many(self, items: Iterable[tuple[str, str]]) -> list[ReportAnnotation]:
        """Annotate `(report_id, text)` pairs; identical texts are processed once."""
        done: dict[str, ReportAnnotation] = {}
        out = []
        for report_id, text in items:
            if text not in done:
                done[text] = self.annotate(report_id, text)
            out.append(done[text].model_copy(update={'report_id': str(report_id)}))
        return out

    def _clauses(self, text: str) -> list[_Clause]:
        clauses = []
        for s_start, s_end in _segments(text, _SENTENCE_END):
            sentence = text[s_start:s_end]
            pieces = _segments(sentence, self._lex.clause_break, s_start)
            for i, (c_start, c_end) in enumerate(pieces):
                lead = 0
                if i and self._is_lead_in(text[clauses[-1].start : clauses[-1].end]):
                    lead = c_start - clauses[-1].start  # "In the hila, no lymph node is seen"
                    c_start = clauses.pop().start
                clauses.append(_Clause(c_start, c_end, text[c_start:c_end], lead))
        return clauses

    def _is_lead_in(self, piece: str) -> bool:
        """A verbless locative opener ("In mediastinal lymph node stations") belongs to the
        clause after it, so a negation there also covers the words it places."""
        return bool(_LOCATIVE_INTRO.match(piece)) and not self._lex.verb.search(piece)

    def _mentions(self, clause: _Clause, names: Iterable[str]) -> list[_Mention]:
        out = []
        asides = [m.span() for m in _ASIDE.finditer(clause.text)]
        for name in names:
            if not self._lex.gates[name].search(clause.text):
                continue
            excluded = [
                _veto_span(m) for rx in self._lex.excludes[name] for m in rx.finditer(clause.text)
            ]
            # Only offered as a questioned cause of something else: not labelled (dev convention).
            excluded += asides
            for rx in self._lex.triggers[name]:
                for match in rx.finditer(clause.text):
                    start, end = match.span('t') if 't' in rx.groupindex else match.span()
                    if _overlaps((start, end), excluded):
                        continue
                    if self._named_in_negated_opener(clause, name, end):
                        status = Status.ABSENT
                    else:
                        status = self._status(clause.text, start, end, asides)
                    out.append(_Mention(name, status, clause, start, end))
                    break
        return out

    def _named_in_negated_opener(self, clause: _Clause, name: str, end: int) -> bool:
        """In "In the lymph node stations, no lymph node is seen" the opener only names the
        place of what the negated clause denies; it counts only when the same finding is named
        again after the negation."""
        return (
            end <= clause.lead
            and self._lex.neg_pre.match(clause.text, clause.lead) is not None
            and self._lex.gates[name].search(clause.text, clause.lead) is not None
        )

    def _status(
        self, text: str, start: int, end: int, asides: Iterable[tuple[int, int]] = ()
    ) -> Status:
        """Negated hedges ("cannot be excluded") first, then scoped negation, then other hedges;
        a questioned aside in parentheses hedges only itself."""
        text = self._lex.pseudo_neg.sub(lambda m: ' ' * len(m.group(0)), text)
        for a, b in asides:
            text = text[:a] + ' ' * (b - a) + text[b:]
        if self._lex.hedge_negated.search(text):
            return Status.UNCERTAIN
        for cue in self._lex.neg_pre.finditer(text, 0, end):  # a cue inside the trigger counts
            if not self._lex.verb.search(text, cue.end(), start):
                return Status.ABSENT
        for cue in self._lex.neg_post.finditer(text, end):
            if not self._lex.verb.search(text, end, cue.start()):
                return Status.ABSENT
        if self._lex.neg_post_strong.search(text, end):
            return Status.ABSENT
        if self._lex.uncertain.search(text):
            return Status.UNCERTAIN
        return Status.PRESENT

    @staticmethod
    def _evidence(mention: _Mention) -> FindingEvidence:
        """The clause is the quote. Location and descriptors come from the comma-delimited part
        around the trigger, so in "plaques in the aorta, a 5 mm nodule in the right lower lobe"
        each finding keeps its own words; a leading "In the left lung, ..." also counts."""
        quote = mention.clause.text
        left = quote.rfind(',', 0, mention.start) + 1
        right = quote.find(',', mention.end)
        near = quote[left : right if right >= 0 else len(quote)]
        location = _parse_location(near)
        intro = quote[: max(left - 1, 0)]
        if _LOCATIVE_INTRO.match(intro):
            lead = _parse_location(intro)
            for key, value in location:
                if value is None:
                    setattr(location, key, getattr(lead, key))
        return FindingEvidence(
            finding=mention.finding,
            status=mention.status,
            quote=quote,
            location=location,
            descriptors=_parse_descriptors(near),
        )


def _first(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return match.group(0).lower() if match else None


def _parse_location(quote: str) -> Location:
    """Side, lobe/segment and non-lung structure as written in the quote (lower-cased)."""
    sides = {m.group(1).lower() for m in _SIDE.finditer(quote)}
    if {'right', 'left'} <= sides or any(s.startswith('bilateral') or s == 'both' for s in sides):
        side = 'bilateral'
    else:
        side = next(iter(sides), None)
    return Location(side=side, region=_first(_REGION, quote), structure=_first(_STRUCTURE, quote))


def _parse_descriptors(quote: str) -> Descriptors:
    """Size, severity and extent words as written in the quote."""
    return Descriptors(
        size=_first(_SIZE, quote),
        severity=_first(_SEVERITY, quote),
        extent=_first(_EXTENT, quote) or _first(_BILATERAL, quote),
    )
