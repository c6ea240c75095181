"""Every training objective, each a config switch with a weight (docs/objective.md has the math).

`create_loss(cfg)` builds a `CombinedLoss`; calling it on the model outputs and the batch returns
`{'loss': weighted total, <term>: unweighted value, ...}`. The contrastive terms gather the
features of every rank with autograd themselves, so the engine never needs to know about it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctclip.distributed import all_gather_no_grad, all_gather_with_grad, is_distributed
from ctcommon.settings import check_keys

_logger = logging.getLogger(__name__)

UNCERTAIN_MODES = ('ignore', 'positive', 'negative')
KL_DIRECTIONS = ('report_to_image', 'image_to_report')
_EPS = 1e-8
# What each term reads from the model outputs, and what produces it (for the error message).
_FEATURES = {
    'image_features': 'an image batch',
    'text_features': 'a text batch',
    'logit_scale': 'any forward',
}


# ---- helpers -----------------------------------------------------------------------------------
def _zero_like_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that stays attached to the graph, so every rank runs the same backward."""
    return sum(t.sum() * 0.0 for t in tensors)


def _rows(batch: dict[str, Any], key: str, n: int, device: torch.device) -> torch.Tensor:
    value = batch.get(key)
    if value is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(value, device=device).bool()


def _paired(batch: dict[str, Any], n: int, device: torch.device) -> torch.Tensor:
    if batch.get('paired') is not None:
        return torch.as_tensor(batch['paired'], device=device).bool()
    return _rows(batch, 'has_image', n, device) & _rows(batch, 'has_text', n, device)


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    row_mask: torch.Tensor | None = None,
    uncertain: str = 'ignore',
    row_weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE over known labels only. Targets: 1/0, probabilities in [0, 1], or -1 (uncertain/unknown).

    `uncertain='positive'|'negative'` maps -1 to 1|0 instead, except in rows that are -1 everywhere
    (no labels at all), which stay masked. The mean is over the entries that count. `pos_weight`
    [C] scales each class's positive term, as in `binary_cross_entropy_with_logits`.
    """
    targets = targets.to(logits.device).float()
    unknown = targets < 0
    if uncertain == 'ignore':
        valid = ~unknown
    else:
        fill = 1.0 if uncertain == 'positive' else 0.0
        targets = torch.where(unknown, torch.full_like(targets, fill), targets)
        valid = (~unknown.all(dim=1, keepdim=True)).expand_as(targets)
    if row_mask is not None:
        valid = valid & row_mask.to(valid.device)[:, None]
    count = valid.sum()
    if count == 0:
        return _zero_like_graph(logits)
    if pos_weight is not None:
        pos_weight = pos_weight.to(logits.device, torch.float32)
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), targets.clamp(0, 1), reduction='none', pos_weight=pos_weight
    )
    weights = valid.float()
    if row_weight is not None:
        weights = weights * row_weight.to(weights)[:, None]
    return (loss * weights).sum() / count


def balanced_pos_weight(labels: np.ndarray, cap: float = 5.0) -> list[float]:
    """Per-class positive weight sqrt(negatives / positives), clipped to [1, cap].

    Rare findings (7-12 % of CT-RATE scans) otherwise get few positive gradients in a short run;
    the square root softens plain inverse frequency, which would weight a 7 % class 13x. Labels
    are [N, C] in {1, 0, -1}; -1 (uncertain or unknown) is left out of the counts, and a class with
    no known positive gets the cap.
    """
    labels = np.asarray(labels, dtype=np.float64)
    pos = (labels == 1).sum(axis=0)
    neg = (labels == 0).sum(axis=0)
    ratio = np.where(pos > 0, np.sqrt(neg / np.maximum(pos, 1)), cap)
    return [round(float(v), 4) for v in np.clip(ratio, 1.0, cap)]


def soft_jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[Na, C] x [Nb, C] label vectors in [0, 1] -> [Na, Nb] overlap; two empty sets overlap fully."""
    inter = torch.minimum(a[:, None, :], b[None, :, :]).sum(-1)
    union = torch.maximum(a[:, None, :], b[None, :, :]).sum(-1)
    return torch.where(union > 0, inter / union.clamp(min=_EPS), torch.ones_like(union))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows with any target mass of -sum(t * log_softmax), targets normalised per row."""
    mass = targets.sum(1)
    keep = mass > 0
    if not keep.any():
        return _zero_like_graph(logits)
    probs = targets[keep] / mass[keep, None]
    return -(probs * F.log_softmax(logits[keep], dim=1)).sum(1).mean()


# ---- terms -------------------------------------------------------------------------------------
@dataclass
class BCELoss:
    """Masked BCE of the classifier: image_logits vs image_labels (pseudo-labels allowed), and
    with `text=True` also text_logits vs text_labels (logged as `bce_text`)."""

    weight: float = 1.0
    uncertain: str = 'ignore'
    pseudo_weight: float = 1.0
    text: bool = False
    # None, one number, one per class, or 'balanced' (ctclip train resolves it from the training
    # labels with `balanced_pos_weight`)
    pos_weight: Any = None
    name = 'bce'
    requires = {'image_logits': "a classifier (head_cfg.type 'image' or 'shared')"}

    def _pos_weight(self, n_classes: int) -> torch.Tensor | None:
        if self.pos_weight is None:
            return None
        if isinstance(self.pos_weight, str):
            raise ValueError(
                f"loss.bce.pos_weight '{self.pos_weight}' must be resolved from the training labels "
                '(ctclip train does it; elsewhere call ctclip.losses.balanced_pos_weight) '
                'before the loss is used'
            )
        weights = torch.as_tensor(self.pos_weight, dtype=torch.float32).reshape(-1)
        if weights.numel() == 1:
            return weights.expand(n_classes)
        if weights.numel() != n_classes:
            raise ValueError(
                f'loss.bce.pos_weight has {weights.numel()} values for {n_classes} classes'
            )
        return weights

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        logits = outputs['image_logits']
        n, device = logits.shape[0], logits.device
        pos_weight = self._pos_weight(logits.shape[1])
        row_weight = None
        if batch.get('image_labels_are_pseudo') is not None and self.pseudo_weight != 1.0:
            pseudo = torch.as_tensor(batch['image_labels_are_pseudo'], device=device).bool()
            row_weight = torch.where(pseudo, self.pseudo_weight, 1.0).float()
        has_image = _rows(batch, 'has_image', n, device)
        out = {
            'bce': masked_bce(
                logits, batch['image_labels'], has_image, self.uncertain, row_weight, pos_weight
            )
        }
        if self.text:
            has_text = _rows(batch, 'has_text', n, device)
            out['bce_text'] = masked_bce(
                outputs['text_logits'], batch['text_labels'], has_text, self.uncertain
            )
        return out


@dataclass
class TextBCELoss:
    """Masked BCE of text_logits for reports (by default only those without their image)."""

    weight: float = 1.0
    uncertain: str = 'ignore'
    unpaired_only: bool = True
    name = 'text_bce'
    requires = {'text_logits': "head_cfg.type 'shared'"}

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        logits = outputs['text_logits']
        n, device = logits.shape[0], logits.device
        rows = _rows(batch, 'has_text', n, device)
        if self.unpaired_only:
            rows = rows & ~_paired(batch, n, device)
        return {'text_bce': masked_bce(logits, batch['text_labels'], rows, self.uncertain)}


class _Gathered:
    """Features, labels and masks of the global batch (every rank's rows, this rank's graph)."""

    def __init__(self, outputs: dict, batch: dict, with_labels: bool = False) -> None:
        image, text = outputs['image_features'].float(), outputs['text_features'].float()
        n, device = image.shape[0], image.device
        self.image = all_gather_with_grad(image)
        self.text = all_gather_with_grad(text)
        self.paired = all_gather_no_grad(_paired(batch, n, device))
        self.has_image = all_gather_no_grad(_rows(batch, 'has_image', n, device))
        self.has_text = all_gather_no_grad(_rows(batch, 'has_text', n, device))
        if with_labels:
            self.image_labels = all_gather_no_grad(
                torch.as_tensor(batch['image_labels'], device=device).float()
            )
            self.text_labels = all_gather_no_grad(
                torch.as_tensor(batch['text_labels'], device=device).float()
            )
        self.local = (image, text)


@dataclass
class ClipLoss:
    """Symmetric InfoNCE over the paired rows of the global batch (open_clip's ClipLoss, gathered)."""

    weight: float = 1.0
    name = 'clip'
    requires = _FEATURES

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        g = _Gathered(outputs, batch)
        index = g.paired.nonzero(as_tuple=True)[0]
        if index.numel() == 0:
            return {'clip': _zero_like_graph(*g.local, outputs['logit_scale'])}
        logits = outputs['logit_scale'].float() * g.image[index] @ g.text[index].T
        labels = torch.arange(index.numel(), device=logits.device)
        return {'clip': (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2}


@dataclass
class MultiPositiveLoss:
    """InfoNCE with soft targets: image i and report j are positives in proportion to the overlap
    of their findings (soft Jaccard), so two studies with the same findings are not pushed apart.
    Every image with labels (pseudo-labels for unpaired images) and every report takes part."""

    weight: float = 1.0
    paired_diagonal: bool = True
    name = 'multi_positive'
    requires = _FEATURES

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        g = _Gathered(outputs, batch, with_labels=True)
        queries = g.has_image & ~(g.image_labels < 0).all(1)
        keys = g.has_text & ~(g.text_labels < 0).all(1)
        qi, ki = queries.nonzero(as_tuple=True)[0], keys.nonzero(as_tuple=True)[0]
        if qi.numel() == 0 or ki.numel() == 0:
            return {'multi_positive': _zero_like_graph(*g.local, outputs['logit_scale'])}
        targets = soft_jaccard(g.image_labels[qi].clamp(min=0), g.text_labels[ki].clamp(min=0))
        if self.paired_diagonal:
            same = (qi[:, None] == ki[None, :]) & g.paired[qi][:, None]
            targets = torch.where(same, torch.ones_like(targets), targets)
        logits = outputs['logit_scale'].float() * g.image[qi] @ g.text[ki].T
        loss = (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.T, targets.T)) / 2
        return {'multi_positive': loss}


def prototype_assignment(
    features: torch.Tensor, prototypes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft assignment of [..., E] features to K prototypes: softmax over K of cosine / temperature."""
    return torch.softmax(features.float() @ prototypes.float().T / temperature, dim=-1)


@dataclass
class EvidenceLoss:
    """LGDEA evidence alignment: image tokens and report evidence are softly assigned to K learnable
    prototypes; the image's mean assignment is pulled to the report's (the teacher, stop-grad) by
    KL; `entropy_weight` adds log K - H(mean prototype usage) against collapse."""

    weight: float = 1.0
    temperature: float = 0.1
    entropy_weight: float = 0.1
    kl_direction: str = 'report_to_image'
    name = 'evidence'
    requires = {
        'image_tokens': 'an image batch',
        'evidence_features': 'evidence_input_ids passed to the model',
        'prototypes': 'evidence_cfg.enabled: true in the model config',
    }

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        tokens, evidence = outputs['image_tokens'], outputs['evidence_features']
        prototypes = outputs['prototypes']
        n, device = tokens.shape[0], tokens.device
        ev_mask = torch.as_tensor(batch['evidence_mask'], device=device).bool()
        img_assign = prototype_assignment(tokens, prototypes, self.temperature)  # [B, N, K]
        ev_assign = prototype_assignment(evidence, prototypes, self.temperature)  # [B, M, K]
        weights = ev_mask.float()[..., None]
        report = (ev_assign * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        image = img_assign.mean(1)
        rows = _rows(batch, 'has_image', n, device) & _paired(batch, n, device) & ev_mask.any(1)
        out = {'evidence': self._kl(image[rows], report[rows].detach(), tokens, evidence)}
        if self.entropy_weight > 0:
            has_image = _rows(batch, 'has_image', n, device)
            used = torch.cat(
                [img_assign[has_image].reshape(-1, img_assign.shape[-1]), ev_assign[ev_mask]]
            )
            out['evidence_entropy'] = self._entropy_gap(used, tokens)
        return out

    def _kl(self, image: torch.Tensor, report: torch.Tensor, *graph: torch.Tensor) -> torch.Tensor:
        if image.shape[0] == 0:
            return _zero_like_graph(*graph)
        log_i, log_r = torch.log(image + _EPS), torch.log(report + _EPS)
        if self.kl_direction == 'report_to_image':
            return (report * (log_r - log_i)).sum(1).mean()
        return (image * (log_i - log_r)).sum(1).mean()

    @staticmethod
    def _entropy_gap(assignments: torch.Tensor, *graph: torch.Tensor) -> torch.Tensor:
        """log K - H(mean assignment): 0 when prototypes are used uniformly, log K when one wins all."""
        if assignments.shape[0] == 0:
            return _zero_like_graph(*graph)
        usage = assignments.mean(0)
        entropy = -(usage * torch.log(usage + _EPS)).sum()
        return math.log(assignments.shape[-1]) - entropy


@dataclass
class TokenEvidenceLoss:
    """Each evidence quote finds its own image among the batch's images through its best-matching
    image tokens, not the pooled vector: where a finding is, not only whether it is there.

    A quote's score on an image is a soft maximum (log-mean-exp at `token_temperature`) of its
    cosines with that image's tokens. InfoNCE at `temperature` over the batch's images makes the
    quote's own image win. Images labelled positive (or uncertain) for the quote's finding are left
    out of the other candidates: they hold the same finding, so only images without it are
    negatives, and what sets the quote's image apart from them is the lesion's own tokens. Only a
    label of exactly 0 makes a negative: an unpaired image's soft pseudo-label never does.
    """

    weight: float = 1.0
    temperature: float = 0.1
    token_temperature: float = 0.05
    name = 'token_evidence'
    requires = {
        'image_tokens': 'an image batch',
        'evidence_features': 'evidence_input_ids passed to the model',
    }

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        local_tokens, local_quotes = outputs['image_tokens'], outputs['evidence_features']
        n, device = local_tokens.shape[0], local_tokens.device
        tokens = all_gather_with_grad(local_tokens.float())  # [B, N, E]
        quotes = all_gather_with_grad(local_quotes.float())  # [B, M, E]
        ev_mask = all_gather_no_grad(torch.as_tensor(batch['evidence_mask'], device=device).bool())
        finding = all_gather_no_grad(torch.as_tensor(batch['evidence_finding'], device=device))
        labels = all_gather_no_grad(torch.as_tensor(batch['image_labels'], device=device).float())
        has_image = all_gather_no_grad(_rows(batch, 'has_image', n, device))
        paired = all_gather_no_grad(_paired(batch, n, device))
        owner, slot = (ev_mask & paired[:, None] & (finding >= 0)).nonzero(as_tuple=True)
        if owner.numel() == 0:
            return {'token_evidence': _zero_like_graph(local_tokens, local_quotes)}
        q = quotes[owner, slot]  # [Q, E]
        cos = torch.einsum('qe,bne->qbn', q, tokens) / self.token_temperature
        scores = (torch.logsumexp(cos, dim=-1) - math.log(tokens.shape[1])) * self.token_temperature
        same = labels[:, finding[owner, slot]].T != 0  # [Q, B]: positive or uncertain for it
        candidate = has_image[None, :] & ~same
        candidate[torch.arange(owner.numel(), device=device), owner] = True
        logits = (scores / self.temperature).masked_fill(~candidate, float('-inf'))
        return {'token_evidence': F.cross_entropy(logits, owner)}


@dataclass
class PromptLoss:
    """Zero-shot prompt alignment: BCE of the zero-shot score itself against the image labels.

    The score is the one `ctclip.inference.zero_shot_scores` computes, sigmoid(scale * (cos(image,
    positive prompt) - cos(image, negative prompt))), with each class's prompts averaged over
    `templates` (an embedding ensemble). Reports say "no X" in many ways that a small text tower
    learns from a few hundred pairs only loosely; this term ties the prompts' own embeddings to the
    labels. Train on other templates than the benchmark scores with, so a gain is not one phrasing.
    """

    weight: float = 1.0
    templates: tuple[str, ...] = ('there-is', 'plain')
    uncertain: str = 'ignore'
    name = 'prompt'
    requires = {
        'image_features': 'an image batch',
        'prompt_features': 'prompt_input_ids passed to the model',
    }

    def texts(self, class_names: list[str]) -> list[str]:
        """The prompts in the order `prompt_features` must follow: class, template, (pos, neg)."""
        from ctclip.prompts import resolve_templates

        pairs = resolve_templates(list(self.templates))
        return [t.format(c=c) for c in class_names for pair in pairs for t in pair]

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        image = outputs['image_features']
        labels = torch.as_tensor(batch['image_labels'], device=image.device)
        prompts = outputs['prompt_features'].reshape(labels.shape[1], -1, 2, image.shape[1])
        pos, neg = (F.normalize(prompts[:, :, i].mean(1), dim=-1) for i in (0, 1))
        logits = outputs['logit_scale'] * (image @ pos.T - image @ neg.T)
        has_image = _rows(batch, 'has_image', image.shape[0], image.device)
        return {'prompt': masked_bce(logits, labels, has_image, self.uncertain)}


TERMS = {
    'bce': BCELoss,
    'clip': ClipLoss,
    'multi_positive': MultiPositiveLoss,
    'evidence': EvidenceLoss,
    'text_bce': TextBCELoss,
    'prompt': PromptLoss,
    'token_evidence': TokenEvidenceLoss,
}
# Sub-terms that a term returns beside its own key, and the weight field that scales each.
_SUBTERM_WEIGHTS = {'bce_text': 'weight', 'evidence_entropy': 'entropy_weight'}


def _check_term(term: Any) -> Any:
    if getattr(term, 'uncertain', 'ignore') not in UNCERTAIN_MODES:
        raise ValueError(
            f"loss.{term.name}.uncertain must be one of {list(UNCERTAIN_MODES)}, not '{term.uncertain}'"
        )
    if getattr(term, 'kl_direction', KL_DIRECTIONS[0]) not in KL_DIRECTIONS:
        raise ValueError(
            f"loss.{term.name}.kl_direction must be one of {list(KL_DIRECTIONS)}, not '{term.kl_direction}'"
        )
    for f in fields(term):  # `temperature`, `token_temperature`: every one divides a cosine
        if f.name.endswith('temperature') and getattr(term, f.name) <= 0:
            raise ValueError(f'loss.{term.name}.{f.name} must be > 0, not {getattr(term, f.name)}')
    if term.weight < 0:
        raise ValueError(f'loss.{term.name}.weight must be >= 0, not {term.weight}')
    return term


def build_term(name: str, spec: Any) -> Any:
    """One term from `weight` (a number) or a dict of its fields (`enabled: false` drops it)."""
    check_keys({name: spec}, TERMS, 'loss')
    cls = TERMS[name]
    spec = (
        {'weight': spec}
        if isinstance(spec, (int, float)) and not isinstance(spec, bool)
        else dict(spec or {})
    )
    spec.pop('enabled', None)
    check_keys(spec, [f.name for f in fields(cls)], f'loss.{name}')
    return _check_term(cls(**spec))


class CombinedLoss:
    """The weighted sum of the active terms; returns the total and every unweighted value."""

    def __init__(self, terms: list[Any], rank: int = 0, world_size: int = 1) -> None:
        if not terms:
            raise ValueError(f'the loss needs at least one active term. Valid: {sorted(TERMS)}')
        self.terms = terms
        self.rank, self.world_size = rank, world_size

    @property
    def names(self) -> list[str]:
        return [term.name for term in self.terms]

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        if self.world_size > 1 and not is_distributed():
            raise RuntimeError(
                f'loss built for world_size={self.world_size} but no process group is initialised'
            )
        values: dict[str, torch.Tensor] = {}
        total = None
        for term in self.terms:
            missing = {k: v for k, v in term.requires.items() if outputs.get(k) is None}
            if missing:
                needs = ', '.join(f"'{k}' (from {v})" for k, v in missing.items())
                raise KeyError(f"loss term '{term.name}' needs model outputs {needs}")
            for key, value in term(outputs, batch).items():
                weight = getattr(term, _SUBTERM_WEIGHTS.get(key, 'weight'))
                values[key] = value
                total = value * weight if total is None else total + value * weight
        return {'loss': total, **values}

    def __repr__(self) -> str:
        return f'CombinedLoss({", ".join(f"{t.name}={t.weight}" for t in self.terms)})'


def create_loss(cfg: dict[str, Any] | None, rank: int = 0, world_size: int = 1) -> CombinedLoss:
    """Build the loss from a config such as `{'bce': 1.0, 'clip': {'weight': 1.0}}`.

    Terms with weight 0 or `enabled: false` are skipped. Valid terms: bce, clip, multi_positive,
    evidence, text_bce, prompt, token_evidence (see docs/objective.md).

    Example:
        >>> loss = create_loss({'clip': 1.0, 'evidence': {'weight': 0.5, 'temperature': 0.1}})
        >>> values = loss(model(**batch_inputs), batch)  # values['loss'].backward()
    """
    return CombinedLoss(active_terms(cfg), rank=rank, world_size=world_size)


def active_terms(cfg: dict[str, Any] | None) -> list[Any]:
    """The terms a loss config switches on: the one definition the engine also asks (it feeds
    the model only the inputs these terms need). Disabled terms are still validated."""
    terms = []
    for name, spec in dict(cfg or {}).items():
        term = build_term(name, spec)
        if isinstance(spec, dict) and spec.get('enabled') is False:
            continue
        if term.weight > 0 or getattr(term, 'entropy_weight', 0) > 0:
            terms.append(term)
    return terms


TEXT_TERMS = ('clip', 'multi_positive', 'evidence', 'text_bce', 'prompt', 'token_evidence')
QUOTE_TERMS = ('evidence', 'token_evidence')  # the terms that read the evidence quotes


def active_term_names(cfg: Mapping | None) -> set[str]:
    """The terms `create_loss` switches on (an evidence term with weight 0 but an entropy weight
    still runs, and still needs the evidence inputs)."""
    return {term.name for term in active_terms(dict(cfg or {}))}


def uses_text(cfg: Mapping | None, active: set[str] | None = None) -> bool:
    """Whether any enabled loss term needs the text tower (the engine skips it otherwise)."""
    active = active_term_names(cfg) if active is None else active
    bce = dict(cfg or {}).get('bce')
    return bool(active & set(TEXT_TERMS)) or bool(isinstance(bce, Mapping) and bce.get('text'))
