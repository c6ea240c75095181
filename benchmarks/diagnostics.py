"""Per-class diagnostics of a demo output: why the towers learn some findings and not others.

For each of the 18 findings it measures, from one `ctclip demo` output folder:

- visibility: the finding's contrast against a shell around it (in units of the shell's std), on
  the native grid in HU, on the native grid through the recipe window, and on the cached
  (resampled, windowed) grid, plus its size in cached voxels;
- label agreement: the rules labels (`labels/labels.csv`) against the synthetic truth;
- crop coverage: the expected share of the finding inside the trainer's random crop (exact, over
  `ctclip.data.transforms.crop_start`'s uniform starts) and inside the evaluation centre crop;
- prevalence per split and co-occurrence (how often class j is present when class i is);
- what each part of the model gets right on held-out volumes: the stage-1 and stage-2 heads,
  zero-shot through the prompts, and the text side alone (held-out reports against the prompts).

    python -m benchmarks.diagnostics --demo-out DEMO_OUT --out OUTDIR

writes `OUTDIR/diagnostics.json`, `OUTDIR/diagnostics.md` and PNGs. CPU only, a few minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plots import pyplot, save_png
from ctcommon.atomic import write_json, write_text
from ctcommon.findings import FINDINGS
from ctcommon.metrics import auroc

_logger = logging.getLogger(__name__)

SHELL_MM = 8.0
LUNG_HU = -600.0  # the renderer's parenchyma: lung voxels below it (synth.render)
WEAK_AUROC = 0.65


# ---- pure metric parts ---------------------------------------------------------------------
def crop_probability(dim: int, size: int, centre: bool = False) -> np.ndarray:
    """Per index of one axis, the probability that the crop holds it.

    The crop is `ctclip.data.transforms.crop_start`'s: a start drawn uniformly from
    [0, dim - size] (or the centre start, `(dim - size) // 2`), then `size` voxels; an axis
    shorter than the crop is read whole (and padded).
    """
    dim, size = int(dim), int(size)
    if dim < 1 or size < 1:
        raise ValueError(f'dim and size must be >= 1, not {dim} and {size}')
    room = max(dim - size, 0)
    starts = np.array([room // 2]) if centre else np.arange(room + 1)
    index = np.arange(dim)[:, None]
    inside = (index >= starts[None, :]) & (index < starts[None, :] + size)
    return inside.mean(axis=1)


def crop_coverage(mask: np.ndarray, crop_zyx: Sequence[int], centre: bool = False) -> float:
    """The expected share of a (soft) mask inside the random crop, or inside the centre crop.

    The start is independent and uniform per axis, so the expectation factorises:
    sum(mask * pz * py * px) / sum(mask). NaN for an empty mask.
    """
    mask = np.asarray(mask, np.float64)
    if mask.ndim != 3 or len(crop_zyx) != 3:
        raise ValueError(f'mask must be 3-D with a 3-value crop, not {mask.shape} and {crop_zyx}')
    total = mask.sum()
    if total <= 0:
        return math.nan
    pz, py, px = (crop_probability(d, s, centre) for d, s in zip(mask.shape, crop_zyx, strict=True))
    return float(np.einsum('zyx,z,y,x->', mask, pz, py, px) / total)


def shell_mask(
    mask: np.ndarray,
    spacing_zyx: Sequence[float],
    shell_mm: float = SHELL_MM,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """The voxels within `shell_mm` of `mask` (outside it), less `exclude`."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    shell = np.zeros(mask.shape, bool)
    if not mask.any():
        return shell
    # The distance transform only near the mask: a box around it, the shell's width wider.
    idx = np.nonzero(mask)
    box = tuple(
        slice(max(int(i.min()) - pad, 0), int(i.max()) + pad + 1)
        for i, pad in zip(idx, (int(math.ceil(shell_mm / s)) + 1 for s in spacing_zyx), strict=True)
    )
    dist = ndimage.distance_transform_edt(~mask[box], sampling=[float(s) for s in spacing_zyx])
    shell[box] = (dist > 0) & (dist <= shell_mm)
    if exclude is not None:
        shell &= ~np.asarray(exclude, bool)
    return shell


def contrast_in_shell(values: np.ndarray, mask: np.ndarray, shell: np.ndarray) -> dict[str, float]:
    """Mean inside `mask` against the mean of `shell`, in units of the shell's std."""
    values = np.asarray(values, np.float64)
    mask, shell = np.asarray(mask, bool), np.asarray(shell, bool)
    if values.shape != mask.shape or values.shape != shell.shape:
        raise ValueError(
            f'values, mask and shell must have one shape, not {values.shape}, {mask.shape} '
            f'and {shell.shape}'
        )
    out = dict(
        inside=math.nan,
        shell=math.nan,
        shell_std=math.nan,
        delta=math.nan,
        contrast=math.nan,
        voxels=int(mask.sum()),
    )
    if not mask.any():
        return out
    out['inside'] = float(values[mask].mean())
    if not shell.any():
        return out
    ring = values[shell]
    std = float(ring.std())
    out.update(shell=float(ring.mean()), shell_std=std, delta=out['inside'] - float(ring.mean()))
    out['contrast'] = out['delta'] / std if std > 0 else math.nan
    return out


def shell_contrast(
    values: np.ndarray,
    mask: np.ndarray,
    spacing_zyx: Sequence[float],
    shell_mm: float = SHELL_MM,
    exclude: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean inside `mask` against a shell of `shell_mm` around it, in units of the shell's std.

    `exclude` (e.g. other findings) is left out of the shell. The values are whatever the caller
    passes: HU, or the windowed model input.
    """
    return contrast_in_shell(values, mask, shell_mask(mask, spacing_zyx, shell_mm, exclude))


def label_agreement(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and Cohen's kappa of silver labels against the truth (one class).

    `predicted` holds 1/0/-1 (uncertain) or NaN (no label); uncertain and missing labels are
    counted, and left out of the three statistics (the trainer's BCE ignores -1 too).
    """
    predicted = np.asarray(predicted, np.float64)
    truth = np.asarray(truth, bool)
    known = (predicted == 0) | (predicted == 1)
    p, t = predicted[known] == 1, truth[known]
    tp, fp = int((p & t).sum()), int((p & ~t).sum())
    fn, tn = int((~p & t).sum()), int((~p & ~t).sum())
    n = tp + fp + fn + tn
    observed = (tp + tn) / n if n else math.nan
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2 if n else math.nan
    kappa = (observed - expected) / (1 - expected) if n and expected < 1 else math.nan
    return dict(
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        uncertain=int((predicted == -1).sum()),
        uncertain_true=int(((predicted == -1) & truth).sum()),
        missing=int((~known & (predicted != -1)).sum()),
        precision=tp / (tp + fp) if tp + fp else math.nan,
        recall=tp / (tp + fn) if tp + fn else math.nan,
        kappa=float(kappa),
    )


def cooccurrence(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts [C, C], P(j present | i present) [C, C]) of a boolean [N, C] matrix."""
    x = np.asarray(present, np.float64)
    counts = x.T @ x
    diag = np.diag(counts)
    with np.errstate(invalid='ignore', divide='ignore'):
        conditional = counts / diag[:, None]
    return counts.astype(np.int64), conditional


def phi(present: np.ndarray) -> np.ndarray:
    """Pearson correlation of the binary columns (NaN for a constant column)."""
    x = np.asarray(present, np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.corrcoef(x, rowvar=False)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels, np.float64)
    if not ((labels == 1).any() and (labels == 0).any()):
        return math.nan
    return float(auroc(np.asarray(scores, np.float64), labels))


# ---- reading a demo output -------------------------------------------------------------------
def read_truth(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f'{path}: line {n} is not JSON ({exc})') from exc
    return rows


def truth_matrix(rows: list[dict]) -> np.ndarray:
    """[N, 18] bool: the finding was rendered (any certainty)."""
    index = {f: i for i, f in enumerate(FINDINGS)}
    out = np.zeros((len(rows), len(FINDINGS)), bool)
    for r, row in enumerate(rows):
        for item in row['findings']:
            out[r, index[item['finding']]] = True
    return out


def _native_hu(path: Path) -> np.ndarray:
    """A CT-RATE-layout NIfTI in (z, y, x) HU (the file's scaling applied), as the masks lie."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32)).transpose(2, 1, 0)


def _source_path(demo_out: Path, attrs: dict, row: dict) -> Path:
    path = Path(str(attrs.get('source_path', '')))
    if path.is_file():
        return path
    split = row['split']
    return (
        demo_out
        / 'cohort'
        / 'dataset'
        / f'{split}_fixed'
        / row['patient']
        / row['scan']
        / row['volume']
    )


def model_windows(demo_out: Path, recipe) -> list:
    """The recipe's window, then any other window the stage-1 model reads (its input channels)."""
    from ctcommon.window import Window

    windows = [Window(*recipe.window_hu, *recipe.window_out)]
    config = demo_out / 'train' / 'stage1' / 'final' / 'config.json'
    if config.is_file():
        spec = json.loads(config.read_text('utf-8')).get('window') or []
        specs = [spec] if spec and not isinstance(spec[0], (list, tuple, dict)) else spec
        for item in specs:
            w = Window.parse(item)
            if w not in windows:
                windows.append(w)
    return windows


def visibility(
    demo_out: Path, rows: list[dict], cache, max_volumes: int | None, failures: list[dict]
) -> tuple[list[dict], dict[str, list[dict]]]:
    """One record per (volume, finding) with a grounding mask; and per class a few examples."""
    from benchmarks.grounding.dataset import read_masks
    from preprocessing import inverse

    recipe = cache.recipe
    windows = model_windows(demo_out, recipe)
    window = windows[0]
    crop = recipe.crop_zyx
    masks_dir = demo_out / 'cohort' / 'grounding' / 'masks'
    dataset = json.loads((demo_out / 'cohort' / 'grounding' / 'dataset.json').read_text('utf-8'))
    categories = {
        item['name']: [item['categories'][k] for k in sorted(item['categories'], key=int)]
        for split in dataset.values()
        for item in split
    }
    by_name = {r['volume']: r for r in rows}
    records: list[dict] = []
    examples: dict[str, list[dict]] = {}
    names = [n for n in categories if n in cache and n in by_name]
    names.sort(key=lambda n: (by_name[n]['split'] != 'valid', n))  # held-out volumes first
    if max_volumes:
        names = names[:max_volumes]
    for name in names:
        row = by_name[name]
        try:
            attrs = cache.attrs(name)
            vol = read_masks(masks_dir / name, len(categories[name]))
            native = _native_hu(_source_path(demo_out, attrs, row))
            cached_hu = cache.read(name).array
        except Exception as exc:  # one line per bad volume, then go on
            failures.append(dict(volume=name, reason=f'{type(exc).__name__}: {exc}'))
            continue
        native_masks = [m.transpose(2, 1, 0) for m in vol.masks]
        if native_masks and native_masks[0].shape != native.shape:
            failures.append(
                dict(volume=name, reason=f'mask {native_masks[0].shape} != CT {native.shape}')
            )
            continue
        all_native = np.any(native_masks, axis=0)
        soft = [
            inverse.source_to_cache(m.astype(np.float32), attrs, recipe, 'linear')
            for m in native_masks
        ]
        all_cached = np.any([s >= 0.5 for s in soft], axis=0)
        native_win, cached_win = window(native), window(cached_hu)
        spacing_native = [float(s) for s in attrs['original_spacing_zyx']]
        spacing_cache = [float(s) for s in recipe.spacing_zyx]
        for finding, m_native, m_soft in zip(categories[name], native_masks, soft, strict=True):
            m_cached = m_soft >= 0.5
            other_n, other_c = all_native & ~m_native, all_cached & ~m_cached
            ring_n = shell_mask(m_native, spacing_native, exclude=other_n)
            lung_ring = ring_n & (native < LUNG_HU)
            # A finding smaller than half a cached voxel everywhere: its brightest voxels.
            core = m_cached if m_cached.any() else m_soft >= 0.5 * m_soft.max()
            hu_in = native[m_native]
            rec = dict(
                volume=name,
                split=row['split'],
                finding=finding,
                native_voxels=int(m_native.sum()),
                native_ml=float(m_native.sum() * np.prod(spacing_native) / 1000),
                cached_voxels=int(m_cached.sum()),
                cached_peak=float(m_soft.max()),
                outside_window=float(
                    ((hu_in > recipe.window_hu[1]) | (hu_in < recipe.window_hu[0])).mean()
                )
                if hu_in.size
                else math.nan,
                native_hu=contrast_in_shell(native, m_native, ring_n),
                native_window=contrast_in_shell(native_win, m_native, ring_n),
                cached_window=shell_contrast(cached_win, core, spacing_cache, exclude=other_c),
                cached_windows=[
                    shell_contrast(w(cached_hu), core, spacing_cache, exclude=other_c)['contrast']
                    for w in windows
                ],
                # Against the lung alone (shell voxels below -600 HU), and how much of the shell
                # is not lung (chest wall, mediastinum, vessels): a subpleural patch abuts both.
                delta_lung_hu=float(hu_in.mean() - np.median(native[lung_ring]))
                if lung_ring.any() and hu_in.size
                else math.nan,
                shell_not_lung=float(1 - lung_ring.sum() / ring_n.sum())
                if ring_n.any()
                else math.nan,
                cached_hu_p10_p90=np.percentile(cached_hu[core], [10, 90]).tolist()
                if core.any()
                else [math.nan, math.nan],
                random_crop=crop_coverage(m_soft, crop),
                centre_crop=crop_coverage(m_soft, crop, centre=True),
            )
            records.append(rec)
            if row['split'] == 'valid' and len(examples.setdefault(finding, [])) < 3:
                examples[finding].append(
                    dict(
                        volume=name,
                        native=native_win,
                        native_mask=m_native,
                        cached=cached_win,
                        cached_mask=m_soft,
                        crop=crop,
                    )
                )
    return records, examples


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(values)) if values else math.nan


def visibility_summary(records: list[dict]) -> dict[str, dict]:
    out = {}
    for finding in FINDINGS:
        mine = [r for r in records if r['finding'] == finding]
        if not mine:
            continue
        out[finding] = dict(
            n=len(mine),
            native_ml=_median([r['native_ml'] for r in mine]),
            cached_voxels=_median([r['cached_voxels'] for r in mine]),
            share_below_1_voxel=float(np.mean([r['cached_voxels'] == 0 for r in mine])),
            cached_peak=_median([r['cached_peak'] for r in mine]),
            outside_window=_median([r['outside_window'] for r in mine]),
            contrast_native_hu=_median([r['native_hu']['contrast'] for r in mine]),
            delta_native_hu=_median([r['native_hu']['delta'] for r in mine]),
            contrast_native_window=_median([r['native_window']['contrast'] for r in mine]),
            contrast_cached_window=_median([r['cached_window']['contrast'] for r in mine]),
            contrast_cached_window2=_median(
                [r['cached_windows'][1] if len(r['cached_windows']) > 1 else math.nan for r in mine]
            ),
            delta_lung_hu=_median([r['delta_lung_hu'] for r in mine]),
            shell_not_lung=_median([r['shell_not_lung'] for r in mine]),
            delta_cached_window=_median([r['cached_window']['delta'] for r in mine]),
            random_crop=_median([r['random_crop'] for r in mine]),
            random_crop_min=float(np.nanmin([r['random_crop'] for r in mine])),
            centre_crop=_median([r['centre_crop'] for r in mine]),
            centre_crop_below_half=float(np.mean([r['centre_crop'] < 0.5 for r in mine])),
        )
    return out


def lung_zone(hu: np.ndarray) -> np.ndarray:
    """The lungs on a cached grid, vessels and lesions inside them included: air below the
    renderer's parenchyma threshold inside the body, holes filled slice by slice."""
    from scipy import ndimage

    body = hu > -500
    labels, n = ndimage.label(body)
    if n:
        body = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    air = (hu < LUNG_HU) & body
    return np.stack([ndimage.binary_fill_holes(s) for s in air])


def lookalikes(
    records: list[dict], cache, rows: list[dict], truth: np.ndarray, split: str = 'valid'
) -> dict[str, dict]:
    """Per lung class: how many lung voxels of a volume WITHOUT the class fall in the finding's
    own cached HU band (its median 10th-90th percentile): partial-volume edges, vessels and other
    findings that look alike voxel by voxel. A finding with fewer voxels than its look-alikes can
    be told apart by shape only."""
    idx = [i for i, r in enumerate(rows) if r['split'] == split and r['volume'] in cache]
    volumes = {rows[i]['volume']: cache.read(rows[i]['volume']).array for i in idx}
    zones = {v: lung_zone(hu) for v, hu in volumes.items()}
    out = {}
    for c, finding in enumerate(FINDINGS):
        mine = [r for r in records if r['finding'] == finding and r['cached_voxels'] > 0]
        if not mine or _median([r['shell_not_lung'] for r in mine]) > 0.5:
            continue  # not a lung finding: the lung zone is the wrong background
        lo = _median([r['cached_hu_p10_p90'][0] for r in mine])
        hi = _median([r['cached_hu_p10_p90'][1] for r in mine])
        counts = [
            int(((volumes[v] >= lo) & (volumes[v] <= hi) & zones[v]).sum())
            for i in idx
            if not truth[i, c]
            for v in [rows[i]['volume']]
        ]
        size = _median([r['cached_voxels'] for r in mine])
        look = float(np.median(counts)) if counts else math.nan
        # The band count itself as a score: how far intensity alone separates the class.
        every = [
            int(((volumes[v] >= lo) & (volumes[v] <= hi) & zones[v]).sum())
            for v in (rows[i]['volume'] for i in idx)
        ]
        out[finding] = dict(
            band_hu=[lo, hi],
            finding_voxels=size,
            lookalike_voxels=look,
            lookalike_iqr=np.percentile(counts, [25, 75]).tolist() if counts else None,
            signal_ratio=size / look if look else math.nan,
            band_count_auroc=_auc(np.array(every, float), truth[idx, c].astype(np.float64)),
        )
    return out


# ---- the model side --------------------------------------------------------------------------
def image_outputs(model, cache, ids: list[str]) -> dict[str, np.ndarray]:
    """Head probabilities and image embeddings on the centre crops of `ids` (the eval input)."""
    import torch

    from ctclip import inference
    from ctclip.data.transforms import model_input, read_hu_crop

    window = inference.input_window(model, inference._recipe_window(cache.recipe))
    size = cache.recipe.crop_zyx
    heads, feats = [], []
    with torch.inference_mode():
        for start in range(0, len(ids), 8):
            batch = [
                model_input(read_hu_crop(cache, i, cache.shape(i), size, window, None), window)
                for i in ids[start : start + 8]
            ]
            out = model.encode_image(torch.from_numpy(np.stack(batch)), window.spec)
            feats.append(out['image_features'].float().numpy())
            if 'image_logits' in out:
                heads.append(torch.sigmoid(out['image_logits']).float().numpy())
    result = {'emb': np.concatenate(feats)}
    if heads:
        result['head'] = np.concatenate(heads)
    return result


def zero_shot_variants(model, emb: np.ndarray) -> dict[str, np.ndarray]:
    """Zero-shot scores [N, 18] with the benchmark's prompts and with two variants that tell
    where the text side loses: the templates stage 2 trained its prompt loss on, and the
    benchmark's templates filled with the words the reports use (`synth.reports.TERMS`)."""
    from ctclip import inference
    from synth.reports import TERMS

    return {
        'zero_shot': inference.zero_shot_scores(model, emb),
        'zero_shot_train_templates': inference.zero_shot_scores(
            model, emb, templates=['there-is', 'plain']
        ),
        'zero_shot_report_words': inference.zero_shot_scores(
            model, emb, class_names=[TERMS[f] for f in FINDINGS]
        ),
    }


def proxies(scores: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Per class, the other class whose truth its score ranks best: a score that tracks a
    co-occurring class better than its own has learned a proxy."""
    out = []
    for c in range(len(FINDINGS)):
        aucs = [_auc(scores[:, c], truth[:, j]) if j != c else -1.0 for j in range(len(FINDINGS))]
        j = int(np.nanargmax(aucs))
        out.append(dict(proxy=FINDINGS[j], proxy_auroc=aucs[j]))
    return out


def text_side(model_dir: Path, reports: list[str]) -> dict[str, Any]:
    """How far the text tower alone separates each class: held-out reports scored by their
    similarity to the positive minus the negative prompt, and by the shared head on the report."""
    import torch

    from ctclip import inference
    from ctclip.prompts import resolve_templates

    model = inference.load_model(model_dir)
    rep = inference.embed_texts(model, reports)
    pos_t, neg_t = resolve_templates(None)[0]
    pos = inference.embed_texts(model, [pos_t.replace('{c}', f) for f in FINDINGS])
    neg = inference.embed_texts(model, [neg_t.replace('{c}', f) for f in FINDINGS])
    out: dict[str, Any] = {
        'prompt_margin': rep @ pos.T - rep @ neg.T,
        'prompt_pair_cosine': np.sum(pos * neg, axis=1),
    }
    if model.classifier is not None and model.config['head_cfg']['type'] == 'shared':
        with torch.inference_mode():
            tokens = model.tokenize(list(reports))
            logits = model.encode_text(tokens['input_ids'], tokens['attention_mask'])
        out['text_head'] = torch.sigmoid(logits['text_logits']).float().numpy()
    return out


# ---- figures ---------------------------------------------------------------------------------
def plot_cooccurrence(
    conditional: np.ndarray, phi_train: np.ndarray, prevalence: np.ndarray, path: Path
) -> Path:
    """P(column | row) over all volumes, and the phi correlation on the training split (the
    shortcuts a tower can learn)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(15, 7))
    labels = [f'{f} ({p:.0%})' for f, p in zip(FINDINGS, prevalence, strict=True)]
    panels = (
        (conditional, 'P(column present | row present), all volumes', 'viridis', 0.0, 1.0, 0.5),
        (phi_train, 'phi correlation, training split', 'RdBu_r', -0.6, 0.6, 0.25),
    )
    for k, (ax, (matrix, title, cmap, lo, hi, mark)) in enumerate(zip(axes, panels, strict=True)):
        im = ax.imshow(matrix, vmin=lo, vmax=hi, cmap=cmap)
        ax.set_xticks(range(len(FINDINGS)), FINDINGS, rotation=70, ha='right', fontsize=7)
        ax.set_yticks(range(len(FINDINGS)), labels if k == 0 else [], fontsize=7)
        for i in range(len(FINDINGS)):
            for j in range(len(FINDINGS)):
                v = matrix[i, j]
                if i != j and not math.isnan(v) and abs(v) >= mark:
                    ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=5)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    path = save_png(fig, path, dpi=70)
    plt.close(fig)
    return path


def plot_examples(examples: dict[str, list[dict]], classes: list[str], path: Path) -> Path:
    """Per class, one held-out example: native slice vs the cached slice (both windowed), the
    finding outlined, the centre crop box dashed."""
    plt = pyplot()
    classes = [c for c in classes if examples.get(c)]
    fig, axes = plt.subplots(len(classes), 2, figsize=(5.2, 2.5 * len(classes)), squeeze=False)
    for row, finding in zip(axes, classes, strict=True):
        ex = examples[finding][0]
        zn = int(np.argmax(ex['native_mask'].sum(axis=(1, 2))))
        zc = int(np.argmax(ex['cached_mask'].sum(axis=(1, 2))))
        row[0].imshow(ex['native'][zn], cmap='gray', vmin=-1, vmax=1)
        row[0].contour(ex['native_mask'][zn], levels=[0.5], colors='r', linewidths=0.6)
        row[0].set_title(f'{finding}\nnative z={zn}', fontsize=7)
        row[1].imshow(ex['cached'][zc], cmap='gray', vmin=-1, vmax=1)
        if ex['cached_mask'][zc].max() >= 0.5:
            row[1].contour(ex['cached_mask'][zc], levels=[0.5], colors='r', linewidths=0.6)
        shape, crop = ex['cached'].shape, ex['crop']
        y0, x0 = (max(shape[1] - crop[1], 0) // 2), (max(shape[2] - crop[2], 0) // 2)
        row[1].add_patch(
            plt.Rectangle((x0, y0), crop[2], crop[1], fill=False, ls='--', ec='y', lw=0.6)
        )
        row[1].set_title(f'cached z={zc} ({ex["volume"]})', fontsize=7)
        for ax in row:
            ax.axis('off')
    fig.tight_layout()
    path = save_png(fig, path, dpi=60)
    plt.close(fig)
    return path


def plot_auroc(table: list[dict], path: Path) -> Path:
    plt = pyplot()
    keys = [
        ('stage1_head_train', 'stage-1 head, its training volumes'),
        ('stage1_head', 'stage-1 head'),
        ('stage2_head', 'stage-2 head'),
        ('stage2_zero_shot', 'stage-2 zero-shot (ours)'),
        ('text_prompt', 'text side: report vs prompts'),
    ]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(keys)
    x = np.arange(len(table))
    for k, (key, label) in enumerate(keys):
        ax.bar(x + k * width, [r.get(key, math.nan) for r in table], width, label=label)
    ax.axhline(0.5, color='k', lw=0.6)
    ax.axhline(WEAK_AUROC, color='r', lw=0.6, ls='--')
    ax.set_xticks(x + 0.4 - width / 2, [r['finding'] for r in table], rotation=70, ha='right')
    ax.tick_params(axis='x', labelsize=7)
    ax.set_ylim(0.2, 1.0)
    ax.set_ylabel('AUROC vs truth, valid split')
    ax.legend(fontsize=6, ncol=2)
    path = save_png(fig, path, dpi=80)
    plt.close(fig)
    return path


# ---- the run ---------------------------------------------------------------------------------
def _bench_auroc(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    per_class = json.loads(path.read_text('utf-8'))['classification']['per_class']
    return {k: v['auroc']['value'] for k, v in per_class.items()}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def _rad_outputs(demo_out: Path, model, failures: list[dict]) -> dict[str, dict[str, float]]:
    """Stage-2 head and zero-shot AUROC on the RAD-ChestCT-layout cache, against its truth."""
    from ctclip import inference
    from preprocessing.cache import open_cache

    path = demo_out / 'cache' / 'radchestct.h5'
    truth_path = demo_out / 'cohort-rad' / 'truth.jsonl'
    if not (path.is_file() and truth_path.is_file()):
        return {}
    cache = open_cache(path)
    all_rows = read_truth(truth_path)
    rows = [r for r in all_rows if r['volume'] in cache]
    if len(rows) < len(all_rows):
        failures.append(
            dict(volume=str(path), reason=f'{len(all_rows) - len(rows)} truth volumes not cached')
        )
    truth = truth_matrix(rows).astype(np.float64)
    outputs = image_outputs(model, cache, [r['volume'] for r in rows])
    zs = inference.zero_shot_scores(model, outputs['emb'])
    out = {'rad_stage2_zero_shot': {f: _auc(zs[:, c], truth[:, c]) for c, f in enumerate(FINDINGS)}}
    if 'head' in outputs:
        out['rad_stage2_head'] = {
            f: _auc(outputs['head'][:, c], truth[:, c]) for c, f in enumerate(FINDINGS)
        }
    return out


def run(
    demo_out: Path,
    out: Path,
    max_volumes: int | None = None,
    models: bool = True,
    fit: bool = True,
) -> tuple[dict, list[dict]]:
    from ctclip.data.text import load_labels, load_reports, volume_key
    from preprocessing.cache import open_cache

    t0 = time.perf_counter()
    failures: list[dict] = []
    rows = read_truth(demo_out / 'cohort' / 'truth.jsonl')
    truth = truth_matrix(rows)
    splits = np.array([r['split'] for r in rows])
    cache = open_cache(demo_out / 'cache' / 'ctrate.h5')
    result: dict[str, Any] = {'demo_out': str(demo_out), 'recipe': cache.recipe_dict}

    # prevalence and co-occurrence
    prevalence = {s: truth[splits == s].mean(axis=0).tolist() for s in sorted(set(splits))}
    counts, conditional = cooccurrence(truth)
    result['prevalence'] = {s: dict(zip(FINDINGS, p, strict=True)) for s, p in prevalence.items()}
    result['cooccurrence'] = dict(
        counts=counts.tolist(), conditional=conditional.tolist(), phi=phi(truth).tolist()
    )
    rad_truth = demo_out / 'cohort-rad' / 'truth.jsonl'
    if rad_truth.is_file():
        rad_rows = read_truth(rad_truth)
        rad = truth_matrix(rad_rows)
        rad_splits = np.array([r['split'] for r in rad_rows])
        result['prevalence_rad'] = {
            s: dict(zip(FINDINGS, rad[rad_splits == s].mean(axis=0).tolist(), strict=True))
            for s in sorted(set(rad_splits))
        }

    # label agreement
    labels = load_labels(demo_out / 'labels' / 'labels.csv')
    keys = [volume_key(r['volume']) for r in rows]
    silver = np.stack([labels.get(k, np.full(len(FINDINGS), np.nan, np.float32)) for k in keys])
    result['labels'] = {
        f: label_agreement(silver[:, c], truth[:, c]) for c, f in enumerate(FINDINGS)
    }

    # visibility and crop coverage
    records, examples = visibility(demo_out, rows, cache, max_volumes, failures)
    result['visibility'] = visibility_summary(records)
    result['lookalikes'] = lookalikes(records, cache, rows, truth)
    _logger.info('visibility: %d findings in %.0f s', len(records), time.perf_counter() - t0)

    # the model side, on held-out volumes
    valid = [i for i, r in enumerate(rows) if r['split'] == 'valid' and r['volume'] in cache]
    ids = [rows[i]['volume'] for i in valid]
    y = truth[valid].astype(np.float64)
    scores: dict[str, np.ndarray] = {}
    extra: dict[str, dict[str, float]] = {}
    if models:
        from ctclip import inference

        for stage in ('stage1', 'stage2'):
            model_dir = demo_out / 'train' / stage / 'final'
            if not model_dir.is_dir():
                failures.append(dict(volume=str(model_dir), reason='no exported model'))
                continue
            model = inference.load_model(model_dir)
            outputs = image_outputs(model, cache, ids)
            if 'head' in outputs:
                scores[f'{stage}_head'] = outputs['head']
            for key, value in zero_shot_variants(model, outputs['emb']).items():
                scores[f'{stage}_{key}'] = value
            if stage == 'stage1' and fit and 'head' in outputs:
                # The head on the volumes it trained on (centre crop): can it fit the class?
                train = [
                    i for i, r in enumerate(rows) if r['split'] == 'train' and r['volume'] in cache
                ]
                head = image_outputs(model, cache, [rows[i]['volume'] for i in train])['head']
                extra['stage1_head_train'] = {
                    f: _auc(head[:, c], truth[train, c]) for c, f in enumerate(FINDINGS)
                }
            if stage == 'stage2':
                found = proxies(scores['stage2_zero_shot'], y)
                result['proxies'] = dict(zip(FINDINGS, found, strict=True))
                extra.update(_rad_outputs(demo_out, model, failures))
        reports = load_reports(demo_out / 'labels' / 'reports.csv')
        model_dir = demo_out / 'train' / 'stage2' / 'final'
        if model_dir.is_dir():
            texts = [reports.get(volume_key(i), '') for i in ids]
            side = text_side(model_dir, texts)
            scores['text_prompt'] = side['prompt_margin']
            if 'text_head' in side:
                scores['text_head'] = side['text_head']
            result['prompt_pair_cosine'] = dict(
                zip(FINDINGS, side['prompt_pair_cosine'].tolist(), strict=True)
            )
        _logger.info('models: %d held-out volumes in %.0f s', len(ids), time.perf_counter() - t0)
    bench = _bench_auroc(demo_out / 'bench' / 'ct-rate' / 'metrics.json')
    bench_rad = _bench_auroc(demo_out / 'bench' / 'rad-chestct' / 'metrics.json')

    # The class's strongest co-occurring partner in the training truth, and the AUROC on the
    # held-out volumes without that partner: what is left once the shortcut cannot help.
    train_phi = phi(truth[splits == 'train'])
    table = []
    for c, f in enumerate(FINDINGS):
        vis = result['visibility'].get(f, {})
        lab = result['labels'][f]
        entry = dict(
            finding=f,
            prevalence_train=prevalence.get('train', [math.nan] * 18)[c],
            prevalence_valid=prevalence.get('valid', [math.nan] * 18)[c],
            n_pos_valid=int(y[:, c].sum()),
            bench_zero_shot=bench.get(f, math.nan),
            bench_zero_shot_rad=bench_rad.get(f, math.nan),
            label_precision=lab['precision'],
            label_recall=lab['recall'],
            label_kappa=lab['kappa'],
            label_uncertain=lab['uncertain'],
            top_cooccurring=_top_partner(conditional, c),
            **{k: vis.get(k, math.nan) for k in _VIS_COLUMNS},
        )
        for key, value in scores.items():
            entry[key] = _auc(value[:, c], y[:, c])
        for key, value in extra.items():
            entry[key] = value.get(f, math.nan)
        partner = int(np.nanargmax(np.where(np.arange(len(FINDINGS)) == c, -2, train_phi[c])))
        entry['partner'] = f'{FINDINGS[partner]} (phi {train_phi[c, partner]:.2f})'
        free = y[:, partner] == 0
        for key in ('stage2_zero_shot', 'stage1_head'):
            if key in scores:
                entry[f'{key}_without_partner'] = _auc(scores[key][free, c], y[free, c])
        entry['signal_ratio'] = result['lookalikes'].get(f, {}).get('signal_ratio', math.nan)
        entry['band_count_auroc'] = (
            result['lookalikes'].get(f, {}).get('band_count_auroc', math.nan)
        )
        if 'stage2_zero_shot' in scores:
            r = phi(scores['stage2_zero_shot'])[c]  # Pearson of the score columns
            j = int(np.nanargmax(np.where(np.arange(len(FINDINGS)) == c, -2, r)))
            entry['score_partner'] = f'{FINDINGS[j]} (r {r[j]:.2f})'

        if 'proxies' in result:
            entry.update(result['proxies'][f])
        table.append(entry)
    result['table'] = table
    result['records'] = [
        {k: v for k, v in r.items() if k not in ('native_hu', 'native_window', 'cached_window')}
        | {
            'contrast_native_hu': r['native_hu']['contrast'],
            'delta_native_hu': r['native_hu']['delta'],
            'contrast_cached_window': r['cached_window']['contrast'],
        }
        for r in records
    ]
    result['failures'] = failures
    result['seconds'] = round(time.perf_counter() - t0, 1)

    out.mkdir(parents=True, exist_ok=True)
    plot_cooccurrence(conditional, train_phi, truth.mean(axis=0), out / 'cooccurrence.png')
    weak = [r['finding'] for r in table if not r['bench_zero_shot'] >= WEAK_AUROC]
    if examples:
        plot_examples(examples, weak, out / 'visibility_examples.png')
    if scores:
        plot_auroc(table, out / 'auroc_by_part.png')
    write_json(out / 'diagnostics.json', _jsonable(result), indent=1)
    write_text(out / 'diagnostics.md', markdown(table, result))
    return result, failures


_VIS_COLUMNS = (
    'n',
    'native_ml',
    'cached_voxels',
    'share_below_1_voxel',
    'outside_window',
    'delta_native_hu',
    'contrast_native_hu',
    'contrast_native_window',
    'contrast_cached_window',
    'contrast_cached_window2',
    'delta_lung_hu',
    'shell_not_lung',
    'random_crop',
    'centre_crop',
    'centre_crop_below_half',
)


def _top_partner(conditional: np.ndarray, c: int) -> str:
    row = np.where(np.arange(len(FINDINGS)) == c, -1, np.nan_to_num(conditional[c], nan=-1))
    j = int(np.argmax(row))
    return f'{FINDINGS[j]} {row[j]:.2f}' if row[j] >= 0 else '-'


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


MODEL_COLUMNS = (
    ('finding', 'class'),
    ('prevalence_train', 'prev. train'),
    ('prevalence_valid', 'prev. valid'),
    ('n_pos_valid', 'pos. valid'),
    ('bench_zero_shot', 'bench zero-shot'),
    ('stage2_zero_shot', 'stage-2 zero-shot'),
    ('stage2_zero_shot_train_templates', 'zero-shot, training templates'),
    ('stage2_zero_shot_report_words', 'zero-shot, report words'),
    ('stage2_head', 'stage-2 head'),
    ('stage1_head', 'stage-1 head'),
    ('stage1_head_train', 'stage-1 head on train'),
    ('text_prompt', 'text: report vs prompts'),
    ('text_head', 'text head'),
    ('proxy', 'zero-shot score tracks'),
    ('proxy_auroc', 'its AUROC'),
    ('partner', 'train partner'),
    ('stage2_zero_shot_without_partner', 'zero-shot w/o partner'),
    ('stage1_head_without_partner', 'stage-1 head w/o partner'),
    ('score_partner', 'zero-shot score most correlated with'),
    ('bench_zero_shot_rad', 'bench RAD'),
    ('rad_stage2_head', 'RAD stage-2 head'),
)
DATA_COLUMNS = (
    ('finding', 'class'),
    ('label_precision', 'label P'),
    ('label_recall', 'label R'),
    ('label_kappa', 'label kappa'),
    ('label_uncertain', 'label -1'),
    ('n', 'masks'),
    ('native_ml', 'size ml'),
    ('cached_voxels', 'cached vox'),
    ('delta_native_hu', 'dHU vs shell'),
    ('delta_lung_hu', 'dHU vs lung'),
    ('shell_not_lung', 'shell not lung'),
    ('contrast_native_hu', 'contrast HU'),
    ('contrast_native_window', 'contrast win'),
    ('contrast_cached_window', 'contrast cached'),
    ('contrast_cached_window2', 'contrast cached win 2'),
    ('outside_window', 'outside window'),
    ('signal_ratio', 'finding / look-alike vox'),
    ('band_count_auroc', 'band count AUROC'),
    ('random_crop', 'random crop'),
    ('centre_crop', 'centre crop'),
    ('top_cooccurring', 'most co-occurring: P(j|i)'),
)
_DIGITS = {'delta_native_hu': 0, 'delta_lung_hu': 0, 'cached_voxels': 0, 'native_ml': 1}


def _table(rows: list[dict], cols: Sequence[tuple[str, str]]) -> list[str]:
    lines = ['| ' + ' | '.join(h for _, h in cols) + ' |', '|' + '---|' * len(cols)]
    for row in rows:
        cells = [_fmt(row.get(k, math.nan), _DIGITS.get(k, 2)) for k, _ in cols]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def markdown(table: list[dict], result: dict) -> str:
    lines = [
        '# Per-class diagnostics',
        '',
        f'Demo output: `{result["demo_out"]}`.',
        '',
        '## What each part of the model gets right',
        '',
        'AUROC against the truth on the held-out (`valid`) volumes, centre crop. *bench*: the '
        "benchmark's zero-shot; *training templates*: the prompt loss's templates instead of the "
        "benchmark's; *report words*: the class filled with the words the reports use; *head on "
        'train*: the stage-1 head on its own training volumes; *text*: the held-out reports scored '
        'by cos(report, positive prompt) - cos(report, negative prompt), and by the shared head; '
        '*tracks*: the other class whose truth the zero-shot score ranks best; *train partner*: '
        'the class most correlated with it in the training truth; *w/o partner*: the AUROC on '
        'the held-out volumes without that partner.',
        '',
        *_table(table, MODEL_COLUMNS),
        '',
        '## Labels, visibility, crops, co-occurrence',
        '',
        'Labels: rules labels against the truth, all splits (-1 left out, counted). Sizes and '
        'contrasts: medians over the findings with a grounding mask; contrast = (mean inside - '
        f'mean of an {SHELL_MM:g} mm shell) / shell std; *vs lung*: against the shell voxels below '
        f'{LUNG_HU:g} HU; *win 2*: the second input window of the model. Crops: the median expected '
        'share of the finding inside the training random crop and the evaluation centre crop. '
        '*finding / look-alike vox*: lung classes, the cached voxels of the finding over the lung '
        'voxels in its HU band in a held-out volume without it (median); *band count AUROC*: '
        'that count as the score of every held-out volume.',
        '',
        *_table(table, DATA_COLUMNS),
    ]
    if result.get('prompt_pair_cosine'):
        lines += ['', 'Cosine of the positive and negative prompt embeddings (stage 2):', '']
        lines += [f'- {f}: {v:.3f}' for f, v in result['prompt_pair_cosine'].items()]
    if result['failures']:
        lines += ['', '## Failures', '']
        lines += [f'- {f["volume"]}: {f["reason"]}' for f in result['failures']]
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.diagnostics', description=__doc__)
    parser.add_argument('--demo-out', required=True, type=Path, help='a `ctclip demo` output')
    parser.add_argument('--out', required=True, type=Path, help='folder for the outputs')
    parser.add_argument('--max-volumes', type=int, default=None, help='cap the mask volumes')
    parser.add_argument('--no-models', action='store_true', help='skip the model passes')
    parser.add_argument(
        '--no-fit', action='store_true', help='skip the stage-1 head on the training volumes'
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    for need in ('cohort/truth.jsonl', 'cache/ctrate.h5', 'labels/labels.csv'):
        if not (args.demo_out / need).is_file():
            print(f'{args.demo_out / need}: missing (not a complete demo output)', file=sys.stderr)
            return 2
    result, failures = run(
        args.demo_out, args.out, args.max_volumes, not args.no_models, not args.no_fit
    )
    for f in failures:
        print(f'{f["volume"]}: {f["reason"]}', file=sys.stderr)
    print(f'wrote {args.out / "diagnostics.md"} in {result["seconds"]} s')
    return 1 if failures else 0


if __name__ == '__main__':
    raise SystemExit(main())
