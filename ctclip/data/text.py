"""Join silver labels, report texts and evidence quotes to cache volumes, and tokenise them once.

Several reconstructions of one scan share one report, so everything is keyed by a normalised
volume name and looked up per cached volume.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_labeling.schema import FINDINGS

_logger = logging.getLogger(__name__)

_SUFFIXES = ('.nii.gz', '.nii', '.npz', '.h5', '.mha', '.nrrd')
_EMPTY_SECTIONS = {'', 'not given.', 'not given', 'nan', 'none'}
EVIDENCE_STATUSES = ('present', 'uncertain', 'absent', 'not_mentioned')


def volume_key(name: str) -> str:
    """`train_1_a_1.nii.gz` and `train_1_a_1` name the same study."""
    name = str(name).strip()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def report_text(findings: str | None, impressions: str | None) -> str:
    """Impressions then Findings, the text CT-RATE labels come from; "Not given." counts as empty.

    The impression comes first because it summarises the positive findings in a few dozen
    tokens, while the findings run to ~250: a text tower that truncates keeps the summary.
    """
    parts = [
        p.strip() for p in (impressions, findings) if p and p.strip().lower() not in _EMPTY_SECTIONS
    ]
    return ' '.join(parts)


def _read_csv(path: str | Path, required: Sequence[str]) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist')
    with path.open(newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path} must have columns {missing}; it has {reader.fieldnames}')
        return list(reader)


def load_labels(path: str | Path) -> dict[str, np.ndarray]:
    """labels.csv -> {volume key: float32[18]}; 1/0/-1, an empty cell (labeling failed) -> -1."""
    path = Path(path)
    rows = _read_csv(path, FINDINGS)
    id_column = 'report_id' if rows and 'report_id' in rows[0] else 'VolumeName'
    if rows and id_column not in rows[0]:
        raise ValueError(f'{path} must have a report_id or VolumeName column')
    out, failed = {}, 0
    for row in rows:
        values = np.full(len(FINDINGS), -1.0, dtype=np.float32)
        for k, name in enumerate(FINDINGS):
            cell = (row[name] or '').strip()
            if cell == '':
                failed += 1
                continue
            value = float(cell)
            if value not in (-1.0, 0.0, 1.0):
                raise ValueError(
                    f'{path}: label {name!r} of {row[id_column]!r} must be 1, 0 or -1, not {cell!r}'
                )
            values[k] = value
        out[volume_key(row[id_column])] = values
    if failed:
        _logger.warning(
            '%s: %d empty label cells (failed labeling) are treated as unknown', path, failed
        )
    return out


def load_reports(path: str | Path) -> dict[str, str]:
    """CT-RATE reports CSV -> {volume key: Findings + Impressions}."""
    rows = _read_csv(path, ('VolumeName', 'Findings_EN', 'Impressions_EN'))
    return {
        volume_key(r['VolumeName']): report_text(r['Findings_EN'], r['Impressions_EN'])
        for r in rows
    }


def load_evidence(
    path: str | Path, statuses: Sequence[str] = ('present', 'uncertain')
) -> dict[str, list[tuple[int, str]]]:
    """evidence.jsonl -> {volume key: [(finding index, "Finding: quote"), ...]} for quoted findings."""
    bad = [s for s in statuses if s not in EVIDENCE_STATUSES]
    if bad:
        raise ValueError(f'Evidence statuses must be among {EVIDENCE_STATUSES}, not {bad}')
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist')
    index = {name: k for k, name in enumerate(FINDINGS)}
    out: dict[str, list[tuple[int, str]]] = {}
    with path.open(encoding='utf-8') as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = volume_key(record['report_id'])
            except (json.JSONDecodeError, KeyError) as error:
                raise ValueError(
                    f'{path}:{line_no} must be a JSON object with report_id ({error})'
                ) from error
            items = []
            for item in record.get('findings', []):
                quote = (item.get('quote') or '').strip()
                if quote and item.get('status') in statuses and item.get('finding') in index:
                    items.append((index[item['finding']], f'{item["finding"]}: {quote}'))
            out[key] = items
    return out


@dataclass
class TextTable:
    """Per-study text arrays aligned with a list of volume ids (row k = volume k's own report)."""

    labels: np.ndarray  # float32 [N, 18], -1 unknown
    has_report: np.ndarray  # bool [N]
    input_ids: np.ndarray  # int64 [N, L]
    attention_mask: np.ndarray  # int64 [N, L]
    evidence_input_ids: np.ndarray  # int64 [N, M, Le]
    evidence_attention_mask: np.ndarray  # int64 [N, M, Le]
    evidence_mask: np.ndarray  # bool [N, M]
    evidence_finding: np.ndarray  # int64 [N, M], -1 pad


Tokenize = Callable[[list[str], int], tuple[np.ndarray, np.ndarray]]


def build_text_table(
    volume_ids: Sequence[str],
    labels: dict[str, np.ndarray],
    reports: dict[str, str] | None,
    evidence: dict[str, list[tuple[int, str]]] | None,
    tokenize: Tokenize | None,
    max_length: int = 128,
    max_evidence: int = 8,
    evidence_length: int = 32,
) -> TextTable:
    """Look every volume up in the label/report/evidence tables and tokenise each unique text once."""
    n = len(volume_ids)
    keys = [volume_key(v) for v in volume_ids]
    lab = (
        np.stack([labels.get(k, np.full(len(FINDINGS), -1.0, np.float32)) for k in keys])
        if n
        else np.zeros((0, len(FINDINGS)), np.float32)
    )
    missing = sum(k not in labels for k in keys)
    if missing:
        _logger.warning('%d of %d volumes have no labels row; their labels are masked', missing, n)
    texts = [(reports or {}).get(k, '') for k in keys]
    has_report = np.array([bool(t) for t in texts], dtype=bool)
    ids = np.zeros((n, max_length), np.int64)
    mask = np.zeros((n, max_length), np.int64)
    if tokenize is not None and has_report.any():
        rows = np.flatnonzero(has_report)
        ids[rows], mask[rows] = _tokenize_unique([texts[r] for r in rows], tokenize, max_length)
    ev_ids = np.zeros((n, max_evidence, evidence_length), np.int64)
    ev_att = np.zeros_like(ev_ids)
    ev_mask = np.zeros((n, max_evidence), bool)
    ev_find = np.full((n, max_evidence), -1, np.int64)
    if evidence and tokenize is not None and max_evidence > 0:
        slots = [
            (r, m, f, q)
            for r, k in enumerate(keys)
            for m, (f, q) in enumerate(evidence.get(k, [])[:max_evidence])
        ]
        if slots:
            t_ids, t_mask = _tokenize_unique([s[3] for s in slots], tokenize, evidence_length)
            for (r, m, f, _), a, b in zip(slots, t_ids, t_mask, strict=False):
                ev_ids[r, m], ev_att[r, m], ev_mask[r, m], ev_find[r, m] = a, b, True, f
    return TextTable(lab, has_report, ids, mask, ev_ids, ev_att, ev_mask, ev_find)


def _tokenize_unique(
    texts: list[str], tokenize: Tokenize, length: int
) -> tuple[np.ndarray, np.ndarray]:
    unique = sorted(set(texts))
    where = {t: k for k, t in enumerate(unique)}
    ids, mask = tokenize(unique, length)
    order = np.array([where[t] for t in texts])
    return ids[order], mask[order]


def model_tokenizer(model) -> Tokenize:
    """Wrap `model.tokenize(texts, max_length)` into fixed-length int64 numpy arrays."""

    def tokenize(texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for start in range(0, len(texts), 512):
            out = model.tokenize(texts[start : start + 512], max_length=length)
            a = np.asarray(out['input_ids'])[:, :length]
            b = np.asarray(out['attention_mask'])[:, :length]
            ids[start : start + len(a), : a.shape[1]] = a
            mask[start : start + len(a), : b.shape[1]] = b
        return ids, mask

    return tokenize
