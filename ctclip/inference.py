"""Inference on an exported model folder: embed volumes and texts, classify zero-shot.

Volumes are windowed and centre-cropped exactly as in evaluation during training: the window
(or stack of windows, one per input channel) comes from the model's config, which training
writes, so a model never silently sees a different window than the one it was trained with; the
crop comes from the cache recipe (or the argument).

Example:
    >>> model = load_model('runs/stage2/final')
    >>> emb = embed_volumes(model, 'cache.h5', ids=['valid_1_a_1.nii.gz'])
    >>> zero_shot_scores(model, emb, ['Emphysema', 'Lung nodule'], templates='there-is')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctclip.model import CTClip
from ctclip.prompts import DEFAULT_TEMPLATES, resolve_templates
from llm_labeling.schema import FINDINGS

_logger = logging.getLogger(__name__)

DEFAULT_RECIPE = 'li2025'
ENSEMBLES = ('embedding', 'probability')


def load_model(directory: str | os.PathLike, device: str | torch.device = 'cpu') -> CTClip:
    """An exported model folder (`save_pretrained`), in eval mode on `device`."""
    model = CTClip.from_pretrained(directory)
    return model.to(device).eval()


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _resolve_recipe(recipe: Any):
    from preprocessing.recipes import Recipe, get_recipe

    if isinstance(recipe, Recipe):
        return recipe
    return get_recipe(recipe if recipe is not None else DEFAULT_RECIPE)


def input_window(model: CTClip, default: Any = None) -> Any:
    """The window(s) the model was trained with (its config), else `default`, checked against
    the image tower's input channels so a 1-window model never silently gets 2 channels."""
    from ctclip.data.transforms import parse_window
    from ctclip.model import check_window

    spec = model.config.get('window') or default
    if spec is None:
        raise ValueError('the model config names no input window and none was given')
    check_window(spec, model.config)
    return parse_window(spec)


def _recipe_window(recipe):
    from ctclip.data.transforms import Window

    return Window(*recipe.window_hu, *recipe.window_out)


@torch.inference_mode()
def _embed_image_batch(model: CTClip, arrays: list[np.ndarray], window: Any) -> np.ndarray:
    """Embeddings of model inputs (`ctclip.data.transforms.model_input`: int16 HU or windowed)."""
    batch = torch.from_numpy(np.stack(arrays)).to(_device(model))
    return model.encode_image(batch, window.spec)['image_features'].float().cpu().numpy()


def embed_volumes(
    model: CTClip,
    cache: Any,
    ids: Sequence[str] | None = None,
    batch_size: int = 4,
    crop_zyx: Sequence[int] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """L2-normalised image embeddings [N, E] of cached volumes (recipe window, centre crop).

    Args:
        model: a CTClip (eval mode is set here).
        cache: a `preprocessing.cache.VolumeCache` or the path of one.
        ids: volume ids, in the order of the output rows; all of the cache when None.
        batch_size: volumes per forward pass.
        crop_zyx: override the recipe's crop (z, y, x).
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    from ctclip.data.transforms import model_input, read_hu_crop
    from preprocessing.cache import open_cache

    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, not {batch_size}')
    if isinstance(cache, (str, os.PathLike)):
        cache = open_cache(cache)
    ids = list(cache.ids() if ids is None else ids)
    missing = [i for i in ids if i not in cache]
    if missing:
        raise KeyError(f'{len(missing)} volume ids are not in the cache, e.g. {missing[:3]}')
    recipe = cache.recipe
    size = tuple(int(s) for s in (crop_zyx or recipe.crop_zyx))
    window = input_window(model, _recipe_window(recipe))
    model.eval()
    rows, pending = [], []
    for volume_id in tqdm(ids, desc='embed volumes', unit='vol', disable=not progress):
        hu = read_hu_crop(cache, volume_id, cache.shape(volume_id), size, window, None)
        pending.append(model_input(hu, window))
        if len(pending) == batch_size:
            rows.append(_embed_image_batch(model, pending, window))
            pending = []
    if pending:
        rows.append(_embed_image_batch(model, pending, window))
    if not rows:
        return np.zeros((0, model.config['embed_dim']), np.float32)
    return np.concatenate(rows)


@torch.inference_mode()
def embed_texts(model: CTClip, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised text embeddings [N, E]."""
    if isinstance(texts, str):
        raise TypeError('texts must be a sequence of strings, not a single str')
    model.eval()
    device = _device(model)
    rows = []
    for start in range(0, len(texts), batch_size):
        tokens = model.tokenize(list(texts[start : start + batch_size]))
        out = model.encode_text(tokens['input_ids'].to(device), tokens['attention_mask'].to(device))
        rows.append(out['text_features'].float().cpu().numpy())
    if not rows:
        return np.zeros((0, model.config['embed_dim']), np.float32)
    return np.concatenate(rows)


def _class_text_embeddings(model: CTClip, class_names: Sequence[str], template: str) -> np.ndarray:
    return embed_texts(model, [template.replace('{c}', name) for name in class_names])


def _renormalise(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def zero_shot_scores(
    model: CTClip,
    image_emb: np.ndarray,
    class_names: Sequence[str] = FINDINGS,
    templates: Any = DEFAULT_TEMPLATES,
    ensemble: str = 'embedding',
) -> np.ndarray:
    """P(present) [N, C]: 2-way softmax of temperature-scaled cosine similarity to the positive
    and the negative prompt of each class (CT-CLIP's protocol).

    Args:
        image_emb: [N, E] L2-normalised image embeddings.
        class_names: fill the templates' `{c}`.
        templates: `('{c} is present.', '{c} is not present.')`, a name from
            `ctclip.prompts.ZERO_SHOT_TEMPLATES`, or a list of either for an ensemble
            (`ctclip.prompts.resolve_templates`).
        ensemble: with several pairs, average the prompt embeddings (`embedding`) or the
            probabilities (`probability`).
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {list(ENSEMBLES)}, not '{ensemble}'")
    image_emb = np.asarray(image_emb, dtype=np.float32)
    if image_emb.ndim != 2 or image_emb.shape[1] != model.config['embed_dim']:
        raise ValueError(
            f'image_emb must be [N, {model.config["embed_dim"]}], not shape {list(image_emb.shape)}'
        )
    pairs = resolve_templates(templates)
    scale = _logit_scale(model)
    pos = [_class_text_embeddings(model, class_names, p) for p, _ in pairs]
    neg = [_class_text_embeddings(model, class_names, n) for _, n in pairs]
    if ensemble == 'embedding':
        pos, neg = [_renormalise(np.mean(pos, axis=0))], [_renormalise(np.mean(neg, axis=0))]
    probs = [
        _two_way_softmax(scale * image_emb @ p.T, scale * image_emb @ n.T)
        for p, n in zip(pos, neg, strict=True)
    ]
    return np.mean(probs, axis=0).astype(np.float32)


@torch.inference_mode()
def _logit_scale(model: CTClip) -> float:
    """The model's temperature through its forward, so ZeRO-3 gathers the partitioned scalar."""
    return float(model()['logit_scale'].float())


def _two_way_softmax(pos_logits: np.ndarray, neg_logits: np.ndarray) -> np.ndarray:
    """exp(p) / (exp(p) + exp(n)), computed stably as a sigmoid of the difference."""
    return 1.0 / (1.0 + np.exp(-(pos_logits.astype(np.float64) - neg_logits)))


def classify_volume(
    model: CTClip,
    path_or_array: str | os.PathLike | np.ndarray,
    class_names: Sequence[str] = FINDINGS,
    templates: Any = DEFAULT_TEMPLATES,
    recipe: Any = None,
) -> dict[str, float]:
    """Zero-shot P(present) per class for one CT: a file (NIfTI, DICOM folder, RAD-ChestCT .npz),
    preprocessed with the recipe, or an int16/float HU array already on the recipe grid (z, y, x).

    The recipe is the argument, else the one saved in the model config, else li2025.
    """
    from ctclip.data.transforms import centre_model_input

    recipe = _resolve_recipe(recipe if recipe is not None else model.config.get('recipe'))
    if isinstance(path_or_array, np.ndarray):
        hu = path_or_array
        if hu.ndim != 3:
            raise ValueError(
                f'the volume must be a 3D (z, y, x) HU array, not shape {list(hu.shape)}'
            )
    else:
        from preprocessing.pipeline import process_row

        hu, _ = process_row({'path': str(Path(path_or_array))}, recipe)
    window = input_window(model, _recipe_window(recipe))
    volume = centre_model_input(hu, recipe.crop_zyx, window)
    emb = _embed_image_batch(model.eval(), [volume], window)
    scores = zero_shot_scores(model, emb, class_names, templates)[0]
    return {name: float(score) for name, score in zip(class_names, scores, strict=True)}


def ground(
    model: CTClip, volume_or_cache_id: Any, phrases: Sequence[str], cache: Any = None, **kwargs
):
    """3D heat maps of `phrases` for one volume, on the source CT's own grid and geometry.

    `volume_or_cache_id` is a cache id (with `cache`), `CACHE.h5::id`, or a NIfTI file / DICOM
    folder preprocessed with the model's recipe. Returns `ctclip.grounding.GroundingMaps`
    (`.maps` [P, z, y, x], `.masks(rule, value)`, `.save(dir)` writes NIfTI with the source
    affine). Details and the threshold rules: `ctclip.grounding`, docs/grounding.md.
    """
    from ctclip.grounding import ground as _ground

    return _ground(model, volume_or_cache_id, phrases, cache=cache, **kwargs)
