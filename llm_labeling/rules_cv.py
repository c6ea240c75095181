"""Honest evaluation of the rules labeler on CT-RATE's 800 manually labelled reports.

Rules are written by hand, so k-fold "training" does not apply; the honest protocol is a held-out
split fixed before any rule was written: a report is held out when the SHA-1 of its AccessionNo is
divisible by 4 (190 of 800 reports). Rules were developed on the other 610 ("dev") only, and error
listings are only ever printed for dev. Seven held-out texts also occur verbatim in dev (the manual
set has duplicate reports under different ids); `heldout-unique` drops them. Run:

    python -m llm_labeling.rules_cv --manual manual_labels_train.csv --split heldout
    python -m llm_labeling.rules_cv --manual manual_labels_train.csv --split dev --errors 'Lung opacity'
    python -m llm_labeling.rules_cv --manual manual_labels_train.csv --split dev --consistency
    python -m llm_labeling.rules_cv --manual manual_labels_train.csv --split dev --adjudication
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_labeling.rules import RulesLabeler
from llm_labeling.schema import FINDINGS

SPLITS = ('dev', 'heldout', 'heldout-unique', 'all')
# The manual labels are binary. Uncertain mentions ("suspicious for", "cannot be excluded") were
# marked positive by CT-RATE's annotators, so -1 scores as 1 against them.
UNCERTAIN_AS = 1
# Every dev error, read and put in one of three kinds (docs/results.md, "Adjudication").
ADJUDICATION = Path(__file__).with_name('dev_adjudication.csv')
VERDICTS = ('gold_error', 'judgement', 'rule_error')


@dataclass(frozen=True)
class ManualReport:
    accession: str
    text: str
    labels: dict[str, int]


def is_heldout(accession: str) -> bool:
    """The fixed held-out rule: SHA-1 of the AccessionNo divisible by 4."""
    return int(hashlib.sha1(accession.encode()).hexdigest(), 16) % 4 == 0


def load_manual(path: str | Path, split: str = 'all') -> list[ManualReport]:
    """Read `manual_labels_train.csv` (AccessionNo, report_text, 18 labels) and keep one split."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, not {split!r}')
    path = Path(path)
    with path.open(newline='', encoding='utf-8') as handle:
        reader = csv.DictReader(handle)
        _require_columns(path, reader, ('AccessionNo', 'report_text', *FINDINGS))
        rows = [
            ManualReport(r['AccessionNo'], r['report_text'], {f: int(r[f]) for f in FINDINGS})
            for r in reader
        ]
    if split == 'all':
        return rows
    dev = [r for r in rows if not is_heldout(r.accession)]
    if split == 'dev':
        return dev
    heldout = [r for r in rows if is_heldout(r.accession)]
    if split == 'heldout-unique':  # 7 held-out texts also occur verbatim in dev under another id
        seen = {r.text for r in dev}
        heldout = [r for r in heldout if r.text not in seen]
    return heldout


def _require_columns(path: Path, reader: csv.DictReader, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f'{path} lacks the columns {missing}')


def binary(value: int) -> int:
    """A 1/0/-1 label scored against binary gold labels."""
    return UNCERTAIN_AS if value == -1 else int(value)


def score(gold: Sequence[dict[str, int]], pred: Sequence[dict[str, int]]) -> dict:
    """Per-class precision/recall/F1 (0 for an empty denominator) and the macro mean F1."""
    per_class = {}
    for name in FINDINGS:
        pairs = [(g[name], binary(p[name])) for g, p in zip(gold, pred, strict=True)]
        tp = sum(1 for g, p in pairs if g == 1 and p == 1)
        fp = sum(1 for g, p in pairs if g == 0 and p == 1)
        fn = sum(1 for g, p in pairs if g == 1 and p == 0)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {'precision': precision, 'recall': recall, 'f1': f1, 'support': tp + fn}
    macro = sum(c['f1'] for c in per_class.values()) / len(FINDINGS)
    return {'n_reports': len(gold), 'macro_f1': macro, 'per_class': per_class}


def bootstrap_macro_ci(
    gold: Sequence[dict[str, int]], pred: Sequence[dict[str, int]], n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% interval of the macro F1, resampling reports with a fixed seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(gold), len(gold))
        values.append(score([gold[i] for i in idx], [pred[i] for i in idx])['macro_f1'])
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def evaluate(
    reports: Sequence[ManualReport], labeler: RulesLabeler | None = None, bootstrap: int = 0
) -> tuple[dict, list]:
    """Score the rules labeler on `reports` (plus a bootstrap CI); also return the annotations."""
    labeler = labeler or RulesLabeler()
    annotations = labeler.annotate_many((r.accession, r.text) for r in reports)
    preds = [a.labels() for a in annotations]
    result = score([r.labels for r in reports], preds)
    result['labeler_version'] = labeler.version
    if bootstrap:
        result['macro_f1_ci95'] = bootstrap_macro_ci([r.labels for r in reports], preds, bootstrap)
    return result, annotations


def markdown_table(result: dict) -> str:
    lines = ['| finding | support | precision | recall | F1 |', '|---|---:|---:|---:|---:|']
    for name, c in result['per_class'].items():
        lines.append(
            f'| {name} | {c["support"]} | {c["precision"]:.3f} | {c["recall"]:.3f} | {c["f1"]:.3f} |'
        )
    lines.append(f'| **macro** | | | | **{result["macro_f1"]:.4f}** |')
    if 'macro_f1_ci95' in result:
        low, high = result['macro_f1_ci95']
        lines.append(f'| macro 95% CI (bootstrap by report) | | | | {low:.3f} to {high:.3f} |')
    return '\n'.join(lines)


def plot_f1(result: dict, path: Path, title: str) -> None:
    """Per-class precision/recall/F1 bars, so a weak class is visible at a glance."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(result['per_class'])
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, key in enumerate(('precision', 'recall', 'f1')):
        values = [result['per_class'][n][key] for n in names]
        ax.barh([y + (i - 1) * 0.27 for y in range(len(names))], values, height=0.27, label=key)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.5, 1.0)
    ax.axvline(
        result['macro_f1'],
        color='k',
        linestyle='--',
        linewidth=1,
        label=f'macro F1 {result["macro_f1"]:.3f}',
    )
    ax.set_title(title)
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + '.tmp.png')
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _print_errors(reports: Sequence[ManualReport], annotations: list, finding: str) -> None:
    for report, ann in zip(reports, annotations, strict=True):
        pred = binary(ann.labels()[finding])
        if pred == report.labels[finding]:
            continue
        kind = 'FP' if pred else 'FN'
        quotes = [f'{e.status.value}: {e.quote}' for e in ann.findings if e.finding == finding]
        print(f'--- {kind} {report.accession} {quotes}\n{report.text}\n')


def label_consistency(reports: Sequence[ManualReport], annotations: list) -> dict:
    """How often the manual labels disagree for the same deciding sentence.

    Reports whose finding is decided by exactly one non-negated clause are grouped by that clause
    (lower-cased, punctuation folded); a group of two or more reports with both labels is a place
    where no rule can be right every time. The minority count bounds what dev tuning can still gain.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for report, ann in zip(reports, annotations, strict=True):
        for name in FINDINGS:
            quotes = {
                re.sub(r'\W+', ' ', e.quote.lower()).strip()
                for e in ann.findings
                if e.finding == name and e.status.value != 'absent'
            }
            if len(quotes) == 1:
                groups.setdefault((name, quotes.pop()), []).append(report.labels[name])
    repeated = {k: v for k, v in groups.items() if len(v) > 1}
    mixed = {k: v for k, v in repeated.items() if len(set(v)) > 1}
    return {
        'groups': len(repeated),
        'reports': sum(len(v) for v in repeated.values()),
        'mixed_groups': len(mixed),
        'minority_labels': sum(min(v.count(0), v.count(1)) for v in mixed.values()),
        'mixed': [
            {'finding': k[0], 'quote': k[1], 'n': len(v), 'positive': sum(v)}
            for k, v in sorted(mixed.items(), key=lambda kv: -len(kv[1]))
        ],
    }


@dataclass(frozen=True)
class Adjudication:
    """Verdicts keyed by (accession, finding), and each row's two readers where both read it."""

    verdicts: dict[tuple[str, str], str]
    readers: list[tuple[str, str]]


def load_adjudication(path: str | Path) -> Adjudication:
    """Read `accession, finding, category[, reader_1, reader_2]` rows.

    `category` is the verdict used for scoring: where two readers disagree it is `judgement`,
    since a disagreement between careful readers is what a judgement call is.
    """
    path = Path(path)
    verdicts: dict[tuple[str, str], str] = {}
    readers: list[tuple[str, str]] = []
    with path.open(newline='', encoding='utf-8') as handle:
        reader = csv.DictReader(handle)
        _require_columns(path, reader, ('accession', 'finding', 'category'))
        for line, row in enumerate(reader, start=2):
            if row['finding'] not in FINDINGS:
                raise ValueError(f'{path} line {line}: unknown finding {row["finding"]!r}')
            said = [row['category'], row.get('reader_1') or '', row.get('reader_2') or '']
            for value in said:
                if value and value not in VERDICTS:
                    raise ValueError(
                        f'{path} line {line}: a verdict must be one of {VERDICTS}, not {value!r}'
                    )
            if not said[0]:
                raise ValueError(f'{path} line {line}: the category is empty')
            key = (row['accession'], row['finding'])
            if key in verdicts:
                raise ValueError(f'{path} line {line}: {key} is adjudicated twice')
            verdicts[key] = said[0]
            if said[1] and said[2]:
                readers.append((said[1], said[2]))
                merged = said[1] if said[1] == said[2] else 'judgement'
                if said[0] != merged:
                    raise ValueError(
                        f'{path} line {line}: readers said {said[1]!r} and {said[2]!r}, so the '
                        f'category must be {merged!r}, not {said[0]!r}'
                    )
    return Adjudication(verdicts, readers)


def _agreement(pairs: Sequence[tuple[str, str]]) -> float:
    return sum(a == b for a, b in pairs) / len(pairs)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float:
    """Agreement between two readers beyond what their category frequencies give by chance."""
    if not pairs:
        raise ValueError('no rows were read by both readers')
    n = len(pairs)
    observed = _agreement(pairs)
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / n**2
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def adjudicate(
    gold: Sequence[dict[str, int]],
    pred: Sequence[dict[str, int]],
    accessions: Sequence[str],
    adjudication: Adjudication,
) -> dict:
    """What each kind of disagreement costs, and so how far any rule change can still go.

    Against the manual labels: the macro F1 as it is, with every remaining `rule_error` fixed,
    and the ceiling of a labeler that matches every manual label except the `gold_error`s (where
    it says what the text says). Against the adjudicated labels (gold errors flipped): the rules'
    own macro F1. Errors with no verdict are listed, and so are verdicts that are no longer errors.
    """
    verdicts = adjudication.verdicts
    counts = dict.fromkeys((*VERDICTS, 'unadjudicated'), 0)
    per_finding = {name: dict.fromkeys((*VERDICTS, 'unadjudicated'), 0) for name in FINDINGS}
    unadjudicated, errors = [], set()
    fixed_pred = [{k: binary(v) for k, v in p.items()} for p in pred]
    # The manual labels with every gold error flipped to what the text says: the rules are scored
    # against them, and they are the ceiling labeler scored against the manual labels.
    corrected_gold = [dict(g) for g in gold]
    for i, accession in enumerate(accessions):
        for name in FINDINGS:
            said = binary(pred[i][name])
            if said == gold[i][name]:
                continue
            errors.add((accession, name))
            kind = verdicts.get((accession, name), 'unadjudicated')
            counts[kind] += 1
            per_finding[name][kind] += 1
            if kind == 'unadjudicated':
                unadjudicated.append((accession, name))
            elif kind == 'rule_error':
                fixed_pred[i][name] = gold[i][name]
            elif kind == 'gold_error':
                corrected_gold[i][name] = said
    pairs = adjudication.readers
    seen = set(accessions)
    no_longer = sorted(k for k in verdicts if k[0] in seen and k not in errors)
    return {
        'errors': counts,
        'per_finding': per_finding,
        'macro_f1': score(gold, pred)['macro_f1'],
        'macro_f1_rule_errors_fixed': score(gold, fixed_pred)['macro_f1'],
        'macro_f1_ceiling': score(gold, corrected_gold)['macro_f1'],
        'macro_f1_vs_adjudicated': score(corrected_gold, pred)['macro_f1'],
        'unadjudicated': unadjudicated,
        'no_longer_errors': no_longer,
        'readers': {
            'rows_read_by_both': len(pairs),
            'agreement': _agreement(pairs) if pairs else None,
            'cohen_kappa': cohen_kappa(pairs) if pairs else None,
        },
    }


def _print_adjudication(result: dict) -> None:
    counts = result['errors']
    print(
        f'{sum(counts.values())} dev errors: '
        + ', '.join(f'{n} {kind}' for kind, n in counts.items())
    )
    print(f'  macro F1 against the manual labels        {result["macro_f1"]:.4f}')
    print(f'  ... with every rule_error fixed           {result["macro_f1_rule_errors_fixed"]:.4f}')
    print(f'  ... ceiling (only gold_error left)        {result["macro_f1_ceiling"]:.4f}')
    print(f'  against the adjudicated labels            {result["macro_f1_vs_adjudicated"]:.4f}')
    for name, by_kind in result['per_finding'].items():
        if any(by_kind.values()):
            print(f'  {name}: ' + ', '.join(f'{n} {k}' for k, n in by_kind.items() if n))
    readers = result['readers']
    if readers['rows_read_by_both']:
        print(
            f'  two readers on {readers["rows_read_by_both"]} rows: agreement '
            f'{readers["agreement"]:.3f}, Cohen kappa {readers["cohen_kappa"]:.3f}'
        )
    for accession, name in result['unadjudicated']:
        print(f'  no verdict: {accession} {name}')
    if result['no_longer_errors']:
        print(f'  {len(result["no_longer_errors"])} adjudicated errors are no longer errors')


def _print_consistency(result: dict) -> None:
    print(
        f'{result["reports"]} reports in {result["groups"]} groups share a deciding sentence; '
        f'{result["mixed_groups"]} groups carry both labels ({result["minority_labels"]} minority labels)'
    )
    for item in result['mixed']:
        print(f'  {item["finding"]}: {item["positive"]}/{item["n"]} positive :: {item["quote"]}')


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m llm_labeling.rules_cv', description=__doc__)
    parser.add_argument(
        '--manual',
        type=Path,
        required=True,
        help="CT-RATE's manual_labels_train.csv (beside a clone: "
        '../shared/data/ctrate/manual_labels_train.csv)',
    )
    parser.add_argument('--split', choices=SPLITS, default='heldout')
    parser.add_argument('--errors', metavar='FINDING', help='print the misclassified dev reports')
    parser.add_argument(
        '--consistency',
        action='store_true',
        help='print dev sentences the manual labels mark both ways',
    )
    parser.add_argument(
        '--adjudication',
        type=Path,
        nargs='?',
        const=ADJUDICATION,
        help='split the dev errors by verdict (default file: llm_labeling/dev_adjudication.csv)',
    )
    parser.add_argument('--json', type=Path, help='also write the scores here')
    parser.add_argument(
        '--bootstrap', type=int, default=1000, help='resamples for the macro CI (0: none)'
    )
    parser.add_argument('--plot', type=Path, help='also write a per-class bar chart (PNG) here')
    args = parser.parse_args(argv)
    for flag in ('errors', 'consistency', 'adjudication'):  # each one reads report texts
        if getattr(args, flag) and args.split != 'dev':
            parser.error(
                f'--{flag} is only allowed with --split dev (held-out reports stay unseen)'
            )
    if args.errors and args.errors not in FINDINGS:
        parser.error(f'--errors must be one of {list(FINDINGS)}, not {args.errors!r}')
    reports = load_manual(args.manual, args.split)
    result, annotations = evaluate(reports, bootstrap=args.bootstrap)
    if args.errors:
        _print_errors(reports, annotations, args.errors)
    if args.consistency:
        _print_consistency(label_consistency(reports, annotations))
    if args.adjudication:
        result['adjudication'] = adjudicate(
            [r.labels for r in reports],
            [a.labels() for a in annotations],
            [r.accession for r in reports],
            load_adjudication(args.adjudication),
        )
        _print_adjudication(result['adjudication'])
    print(f'split={args.split} n={len(reports)} uncertain_as={UNCERTAIN_AS}')
    print(markdown_table(result))
    if args.json:
        tmp = args.json.with_name(args.json.name + '.tmp')
        tmp.write_text(
            json.dumps({'split': args.split, 'uncertain_as': UNCERTAIN_AS, **result}, indent=2),
            encoding='utf-8',
        )
        tmp.replace(args.json)
    if args.plot:
        plot_f1(
            result, args.plot, f'Rules labeler vs manual labels ({args.split}, n={len(reports)})'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
