"""Grounding benchmarks: score predicted masks (`grounding-score`) or a model's maps (`grounding`).

Both write `metrics.json` (every number with its bootstrap CI over patients, the options and the
versions), `report.md` / `report.html` with per-finding and per-category tables, `pairs.csv`
(one row per case and finding) and overlay PNGs: an axial and a coronal slice through each shown
finding, CT in gray, the heat map in colour and the true mask's contour.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bootstrap import BootstrapConfig
from benchmarks.grounding import metrics as M
from benchmarks.grounding.dataset import (
    GroundingCase,
    GroundingDataError,
    read_dataset,
    read_masks,
)
from ctcommon.atomic import atomic_path, write_text

_logger = logging.getLogger(__name__)

METRIC_LABELS = {
    'global_dice': 'Global Dice',
    'global_hit_rate': 'Hit rate (Dice >= 0.1)',
    'instance_precision': 'Instance precision',
    'instance_recall': 'Instance recall',
    'instance_f1': 'Instance F1',
    'pointing_game': 'Pointing game',
}


@dataclass
class BootstrapSettings:
    n_draws: int = 1000
    seed: int = 0
    level: float = 0.95


@dataclass
class GroundingSettings:
    """The settings of both grounding verbs (dotted overrides: `bootstrap.n_draws=200`)."""

    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    splits: list[str] | None = None  # None: every split in the dataset file
    overlays: int = 12  # overlay PNGs (case, finding pairs) in the report; 0 = none
    threshold: str = 'top_fraction'  # the map -> mask rule (ctclip.inference.THRESHOLD_RULES)
    threshold_value: float = 0.02
    seed: int = 0  # the random baseline's maps


def bootstrap_config(settings: GroundingSettings) -> BootstrapConfig:
    b = settings.bootstrap
    return BootstrapConfig(
        n_draws=int(b.n_draws), seed=int(b.seed), level=float(b.level), unit='scan'
    )


# ---- scoring predicted files ------------------------------------------------------------------
def score_predictions(
    pred_dir: str | Path,
    dataset: str | Path,
    masks_dir: str | Path,
    out: str | Path,
    images_dir: str | Path | None = None,
    settings: GroundingSettings | None = None,
) -> dict:
    """Score prediction files laid out like the gold masks (`PRED/<name>`, one mask per finding).

    A prediction's voxels above 0.5 are its mask and its values are the map of the pointing game
    (a probability map ranks voxels; a binary mask points at its central voxel). A missing or
    unreadable prediction, or one on another grid than the gold mask, scores as empty and is
    listed in `failures` with its reason.
    """
    settings = settings or GroundingSettings()
    cases = read_dataset(dataset, settings.splits)
    pairs: list[M.PairScore] = []
    failures: list[dict] = []
    shown: list[dict] = []
    for case in cases:
        gold = _read_gold(masks_dir, case, failures)
        if gold is None:
            continue
        pred_path = Path(pred_dir) / case.name
        values, reason = None, ''
        try:
            pv = read_masks(pred_path, len(case.findings))
            if pv.shape != gold.shape or not np.allclose(pv.affine, gold.affine, atol=1e-3):
                reason = (
                    f'{pred_path}: grid must match the gold mask (shape {list(gold.shape)}), '
                    f'not shape {list(pv.shape)} with another affine'
                )
            else:
                values = _values(pred_path, len(case.findings))
        except (FileNotFoundError, GroundingDataError) as exc:
            reason = str(exc)
        if reason:
            failures.append({'name': case.name, 'reason': reason})
        for i, finding in enumerate(case.findings):
            truth = gold.masks[i]
            score = values[i] if values is not None else np.zeros(truth.shape, np.float32)
            pair = M.score_pair(
                truth, score > 0.5, score, case.patient, case.name, finding.text, finding.category
            )
            pairs.append(pair)
            if len(shown) < settings.overlays and truth.any():
                shown.append(dict(case=case, index=i, truth=truth, heat=score, affine=gold.affine))
    metrics = _metrics_block(pairs, settings)
    result = {
        'title': 'Grounding: predicted masks',
        'protocol': 'ReXGroundingCT leaderboard metrics + pointing game',
        'inputs': {
            'pred': str(pred_dir),
            'dataset': str(dataset),
            'masks': str(masks_dir),
            'images': str(images_dir) if images_dir else None,
        },
        'model': metrics,
        'failures': failures,
    }
    write_grounding_report(result, out, settings, shown, images_dir, pairs)
    return result


def _read_gold(masks_dir: str | Path, case: GroundingCase, failures: list[dict]):
    try:
        return read_masks(Path(masks_dir) / case.name, len(case.findings))
    except (FileNotFoundError, GroundingDataError) as exc:
        failures.append({'name': case.name, 'reason': f'gold: {exc}'})
        return None


def _values(path: Path, n: int) -> np.ndarray:
    """The prediction file's values as float32 (F, X, Y, Z) (read_masks keeps only > 0)."""
    import nibabel as nib

    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        return data[None]
    return np.moveaxis(data, -1, 0) if data.shape[-1] == n else data


def _metrics_block(pairs: Sequence[M.PairScore], settings: GroundingSettings) -> dict:
    defined = [p for p in pairs if not math.isnan(p.dice)]
    return {
        'metrics': M.summarise_pairs(defined, bootstrap_config(settings)),
        'per_finding_category': M.per_finding_table(defined, 'category'),
        'n_pairs': len(defined),
        'n_cases': len({p.case for p in defined}),
        'n_patients': len({p.patient for p in defined}),
        'n_pairs_empty_truth': len(pairs) - len(defined),
    }


# ---- report ----------------------------------------------------------------------------------
def _fmt(entry: dict | None) -> str:
    from benchmarks.report import fmt

    return fmt(entry)


def _pairs_csv(pairs: Sequence[M.PairScore]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(
        ['patient', 'case', 'category', 'finding', 'dice', 'hit', 'tp', 'fp', 'fn', 'pointing']
    )
    for p in pairs:
        writer.writerow(
            [
                p.patient,
                p.case,
                p.category,
                p.finding,
                f'{p.dice:.6f}',
                int(p.hit),
                p.tp,
                p.fp,
                p.fn,
                int(p.pointing),
            ]
        )
    return buf.getvalue()


def _blocks(result: dict, images: list[tuple[str, str]]) -> list[tuple]:
    arms = {'model': result['model'], **result.get('baselines', {})}
    blocks: list[tuple] = [('h1', result['title']), ('p', result['protocol'])]
    for key, value in result.get('inputs', {}).items():
        if value:
            blocks.append(('li', f'{key}: {value}'))
    m = result['model']
    blocks.append(
        (
            'p',
            f'{m["n_pairs"]} findings in {m["n_cases"]} cases of {m["n_patients"]} patients; '
            'intervals: bootstrap over patients.',
        )
    )
    blocks.append(('h2', 'Metrics'))
    rows = [[METRIC_LABELS[k], *(_fmt(a['metrics'][k]) for a in arms.values())] for k in M.METRICS]
    blocks.append(('table', ['metric', *arms], rows))
    blocks.append(('h2', 'Per finding category'))
    cat_rows = [
        [r['category'], r['n'], *(f'{r[k]:.3f}' if r[k] == r[k] else 'n/a' for k in M.METRICS)]
        for r in m['per_finding_category']
    ]
    blocks.append(('table', ['category', 'n', *(METRIC_LABELS[k] for k in M.METRICS)], cat_rows))
    for note in result.get('notes', []):
        blocks.append(('li', note))
    if result.get('failures'):
        blocks.append(('h2', f'Failures ({len(result["failures"])})'))
        for f in result['failures']:
            blocks.append(('li', f'{f["name"]}: {f["reason"]}'))
    if images:
        blocks.append(('h2', 'Overlays (axial | coronal; gray CT, heat map, truth contour)'))
        for path, alt in images:
            blocks.append(('img', path, alt))
    return blocks


def write_grounding_report(
    result: dict,
    out: str | Path,
    settings: GroundingSettings,
    shown: list[dict],
    images_dir: str | Path | None,
    pairs: Sequence[M.PairScore],
) -> dict[str, Path]:
    from benchmarks.report import _clean_nan, _json_default, render_html, render_markdown, versions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.setdefault('created', dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
    result.setdefault('versions', versions())
    result['options'] = asdict(settings)
    images: list[tuple[str, str]] = []
    if shown:
        (out / 'overlays').mkdir(exist_ok=True)
        for k, item in enumerate(shown):
            ct = item.get('ct')
            if ct is None:
                ct = _load_ct(images_dir, item['case'].name, item['truth'].shape)
            name = f'overlays/{k:03d}.png'
            finding = item['case'].findings[item['index']]
            plot_overlay(
                out / name, item['truth'], item['heat'], ct, f'{item["case"].name}: {finding.text}'
            )
            images.append((name, f'{item["case"].name} finding {finding.key}'))
    paths = {
        'metrics': out / 'metrics.json',
        'markdown': out / 'report.md',
        'html': out / 'report.html',
    }
    text = json.dumps(_clean_nan(result), indent=2, default=_json_default) + '\n'
    with atomic_path(paths['metrics'], verify=lambda t: json.loads(t.read_text('utf-8'))) as tmp:
        tmp.write_text(text, encoding='utf-8')
    write_text(out / 'pairs.csv', _pairs_csv(pairs))
    blocks = _blocks(result, images)
    write_text(paths['markdown'], render_markdown(blocks))
    write_text(paths['html'], render_html(blocks, result['title']))
    return paths


def _load_ct(images_dir: str | Path | None, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if not images_dir:
        return None
    path = Path(images_dir) / name
    if not path.is_file():
        return None
    import nibabel as nib

    data = np.asanyarray(nib.load(str(path)).dataobj)
    return data.astype(np.float32) if tuple(data.shape) == tuple(shape) else None


def plot_overlay(
    path: Path, truth: np.ndarray, heat: np.ndarray, ct: np.ndarray | None, title: str
) -> Path:
    """Axial and coronal slices (NIfTI voxel order X, Y, Z) through the finding's centre."""
    from benchmarks.plots import pyplot, save_png

    plt = pyplot()
    centre = np.round(np.argwhere(truth).mean(axis=0)).astype(int)
    views = {
        'axial': lambda a: a[:, :, centre[2]].T,
        'coronal': lambda a: a[:, centre[1], :].T[::-1],
    }
    # colour the top decile of the voxels the map covers (a map's -1 means 'not seen')
    seen = np.asarray(heat, np.float32)
    seen = seen[np.isfinite(seen) & (seen > -1.0)]
    lo = float(np.percentile(seen, 90)) if seen.size else 0.0
    hi = float(seen.max()) if seen.size else 1.0
    lo = min(lo, hi - 1e-6)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, (label, view) in zip(axes, views.items(), strict=True):
        if ct is not None:
            ax.imshow(np.clip(view(ct), -1000, 400), cmap='gray', interpolation='nearest')
        h = view(np.asarray(heat, np.float32))
        ax.imshow(np.ma.masked_where(~(h >= lo), h), cmap='inferno', alpha=0.6, vmin=lo, vmax=hi)
        t = view(truth.astype(np.float32))
        if t.any():
            ax.contour(t, levels=[0.5], colors='cyan', linewidths=1.0)
        ax.set_title(label, fontsize=9)
        ax.axis('off')
    fig.suptitle(title[:110], fontsize=9)
    save_png(fig, path)
    plt.close(fig)
    return path


def settings_from(overrides: dict[str, Any] | None) -> GroundingSettings:
    from ctcommon.settings import from_mapping

    return from_mapping(GroundingSettings, overrides or {}, 'grounding')


# ---- a model's maps, with the random and location-prior baselines ------------------------------
PRIOR_FRAME = (32, 64, 64)  # (z, y, x) of the normalised frame: the body's bounding box


def _body_box(body: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(body)
    if idx.size == 0:
        return tuple(slice(0, n) for n in body.shape)
    lo, hi = idx.min(0), idx.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode='trilinear')[0, 0].numpy()


class LocationPrior:
    """Mean TRAINING mask of each finding category in a normalised frame: the body's bounding box
    on the cache grid (canonical LPS orientation), resized to `PRIOR_FRAME`. It shows how much of
    a score needs no image at all ('effusions lie at the bottom')."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, category: str, mask_cache: np.ndarray, body_cache: np.ndarray) -> None:
        framed = _resize(mask_cache[_body_box(body_cache)], PRIOR_FRAME)
        self.sums[category] = self.sums.get(category, 0) + framed
        self.counts[category] = self.counts.get(category, 0) + 1

    def frame(self, category: str) -> np.ndarray:
        """The category's mean mask; the mean over all categories for an unseen one."""
        if category in self.sums:
            return self.sums[category] / self.counts[category]
        total = sum(self.sums.values())
        return total / max(1, sum(self.counts.values())) if self.sums else np.zeros(PRIOR_FRAME)

    def on_cache(self, category: str, body_cache: np.ndarray) -> np.ndarray:
        box = _body_box(body_cache)
        out = np.zeros(body_cache.shape, np.float32)
        out[box] = _resize(self.frame(category), [s.stop - s.start for s in box])
        return out


def _gold_on_cache(cache, name, vol, attrs, recipe):
    """(F, z, y, x) float masks of a gold file on the cache grid (linear resample)."""
    from preprocessing import inverse

    return np.stack(
        [
            inverse.source_to_cache(
                m.transpose(2, 1, 0).astype(np.float32), attrs, recipe, 'linear'
            )
            for m in vol.masks
        ]
    )


def build_prior(
    cache, cases: Sequence[GroundingCase], masks_dir: str | Path, notes: list[str]
) -> LocationPrior:
    from ctclip.grounding import body_mask

    prior, skipped = LocationPrior(), []
    recipe = cache.recipe
    for case in cases:
        if case.name not in cache:
            skipped.append(case.name)
            continue
        try:
            vol = read_masks(Path(masks_dir) / case.name, len(case.findings))
        except (FileNotFoundError, GroundingDataError) as exc:
            notes.append(f'location prior: skipped {case.name}: {exc}')
            continue
        entry = cache.read(case.name)
        body = body_mask(np.asarray(entry.array))
        gold = _gold_on_cache(cache, case.name, vol, entry.attrs, recipe)
        for finding, mask in zip(case.findings, gold, strict=True):
            prior.add(finding.category or finding.text, mask, body)
    if skipped:
        notes.append(
            f'location prior: {len(skipped)} training volume(s) not in the cache were left out'
        )
    notes.append(
        f'location prior: {sum(prior.counts.values())} training masks in '
        f'{len(prior.counts)} categories'
    )
    return prior


def run_model(
    model_dir: str | Path,
    data: str | Path,
    dataset: str | Path,
    masks_dir: str | Path,
    out: str | Path,
    prior_from: str | Path | None = None,
    prior_masks: str | Path | None = None,
    images_dir: str | Path | None = None,
    settings: GroundingSettings | None = None,
    model: Any = None,
) -> dict:
    """Ground every finding's text of the dataset in its volume and score the thresholded maps;
    the random-map and location-prior baselines are scored in the same run on the same pairs.

    The location prior comes from `prior_from` (a dataset JSON of TRAINING patients, masks in
    `prior_masks`, default `masks_dir`); without it, from the `train` split of `dataset` when the
    scored splits leave it out. Volumes are read from the cache `data` by their `name`.
    """
    from ctclip.grounding import body_mask, check_threshold, ground, threshold_maps
    from ctclip.inference import embed_texts, load_model
    from preprocessing import inverse
    from preprocessing.cache import open_cache

    settings = settings or GroundingSettings()
    check_threshold(settings.threshold, settings.threshold_value)
    rule, value = settings.threshold, settings.threshold_value
    cases = read_dataset(dataset, settings.splits)
    cache = open_cache(data)
    model = model if model is not None else load_model(model_dir)
    notes: list[str] = []
    if prior_from:
        prior_cases = read_dataset(prior_from, ['train'] if _has_train(prior_from) else None)
        prior_dir = prior_masks or masks_dir
    else:
        scored = {c.split for c in cases}
        prior_cases = [
            c for c in read_dataset(dataset) if c.split == 'train' and 'train' not in scored
        ]
        prior_dir = masks_dir
        if not prior_cases:
            notes.append('location prior: no training patients (--prior-from); baseline omitted')
    names = {c.name for c in cases}
    leak = sorted(names & {c.name for c in prior_cases})
    if leak:
        raise ValueError(
            f'--prior-from must hold training volumes only, not scored ones, e.g. {leak[:3]}'
        )
    prior = build_prior(cache, prior_cases, prior_dir, notes) if prior_cases else None
    texts = sorted({f.text for c in cases for f in c.findings})
    embedded = dict(zip(texts, embed_texts(model, texts), strict=True)) if texts else {}
    rng = np.random.default_rng(settings.seed)
    arms: dict[str, list[M.PairScore]] = {'model': [], 'random': []}
    if prior is not None:
        arms['location_prior'] = []
    failures: list[dict] = []
    shown: list[dict] = []
    from tqdm.auto import tqdm

    for case in tqdm(cases, desc='grounding', unit='vol'):
        if case.name not in cache:
            failures.append({'name': case.name, 'reason': f'not in the cache {data}'})
            continue
        gold = _read_gold(masks_dir, case, failures)
        if gold is None:
            continue
        phrases = [f.text for f in case.findings]
        result = ground(
            model,
            case.name,
            phrases,
            cache=cache,
            text_embeddings=np.stack([embedded[t] for t in phrases]),
        )
        maps_xyz = result.maps.transpose(0, 3, 2, 1)
        if maps_xyz.shape[1:] != gold.shape or not np.allclose(
            result.geometry.affine_ras(), gold.affine, atol=1e-2
        ):
            failures.append(
                {
                    'name': case.name,
                    'reason': f'{gold.path}: grid must match the volume the cache came from '
                    f'(shape {list(maps_xyz.shape[1:])}), not shape {list(gold.shape)} '
                    'or another affine',
                }
            )
            continue
        body = result.body
        heat = {'model': result.maps}
        heat['random'] = np.where(body, rng.random(result.maps.shape, dtype=np.float32), -1.0)
        if prior is not None:
            entry = cache.read(case.name)
            body_cache = body_mask(np.asarray(entry.array))
            heat['location_prior'] = np.stack(
                [
                    inverse.cache_to_source(
                        prior.on_cache(f.category or f.text, body_cache),
                        entry.attrs,
                        cache.recipe,
                        'linear',
                        volume=case.name,
                    )[0]
                    for f in case.findings
                ]
            )
        for arm, maps in heat.items():
            masks = threshold_maps(maps, body, rule, value)
            pointed = np.where(body, maps, -np.inf)  # every arm points inside the body
            for i, finding in enumerate(case.findings):
                arms[arm].append(
                    M.score_pair(
                        gold.masks[i],
                        masks[i].transpose(2, 1, 0),
                        pointed[i].transpose(2, 1, 0),
                        case.patient,
                        case.name,
                        finding.text,
                        finding.category,
                    )
                )
        if len(shown) < settings.overlays:
            ct, _ = inverse.cache_to_source(
                cache.read(case.name).array.astype(np.float32),
                cache.attrs(case.name),
                cache.recipe,
                'linear',
                fill=-1000.0,
            )
            for i in range(len(case.findings)):
                if len(shown) < settings.overlays and gold.masks[i].any():
                    shown.append(
                        dict(
                            case=case,
                            index=i,
                            truth=gold.masks[i],
                            heat=maps_xyz[i],
                            affine=gold.affine,
                            ct=ct.transpose(2, 1, 0),
                        )
                    )
    result_doc = {
        'title': 'Grounding: phrase heat maps of a model',
        'protocol': 'ReXGroundingCT leaderboard metrics + pointing game; masks: '
        f'{rule} {value} of the body',
        'inputs': {
            'model': str(model_dir),
            'data': str(data),
            'dataset': str(dataset),
            'masks': str(masks_dir),
            'prior_from': str(prior_from) if prior_from else None,
        },
        'model': _metrics_block(arms['model'], settings),
        'baselines': {k: _metrics_block(v, settings) for k, v in arms.items() if k != 'model'},
        'threshold': {'rule': rule, 'value': value},
        'failures': failures,
        'notes': notes,
    }
    write_grounding_report(result_doc, out, settings, shown, images_dir, arms['model'])
    return result_doc


def _has_train(path: str | Path) -> bool:
    data = json.loads(Path(path).read_text(encoding='utf-8'))
    return isinstance(data, dict) and 'train' in data
