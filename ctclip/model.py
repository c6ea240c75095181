"""CTClip: a 3D image tower and a text tower projected into one L2-normalised space.

The model returns features, never a loss (the losses live in `ctclip.losses`). It also holds
what the losses learn but do not own: the temperature, GreenRFM's classifier shared by both
towers, and the LGDEA evidence prototypes, so DeepSpeed optimises and checkpoints them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctclip.serialization import TOKENIZER_DIR, load_state, read_model_dir, save_model_dir
from ctclip.towers.image import build_image_tower
from ctclip.towers.text import TextCfg, TextTower
from ctcommon.settings import check_keys

_logger = logging.getLogger(__name__)

HEAD_TYPES = ('none', 'image', 'shared')
HEAD_INPUTS = ('projected', 'normalized')


def _dataclass_from_dict(cls, cfg: dict[str, Any] | None, section: str):
    cfg = dict(cfg or {})
    check_keys(cfg, [f.name for f in fields(cls)], section)
    return cls(**cfg)


@dataclass
class HeadCfg:
    """`image`: classifier on the image side only; `shared`: one classifier for both towers (GreenRFM)."""

    type: str = 'shared'
    num_classes: int = 18
    input: str = 'projected'

    def check(self) -> HeadCfg:
        if self.type not in HEAD_TYPES:
            raise ValueError(f"head_cfg.type must be one of {list(HEAD_TYPES)}, not '{self.type}'")
        if self.input not in HEAD_INPUTS:
            raise ValueError(
                f"head_cfg.input must be one of {list(HEAD_INPUTS)}, not '{self.input}'"
            )
        if self.num_classes < 1:
            raise ValueError(f'head_cfg.num_classes must be >= 1, not {self.num_classes}')
        return self


@dataclass
class EvidenceCfg:
    """K learnable prototypes spanning the evidence space (LGDEA)."""

    enabled: bool = False
    num_prototypes: int = 32

    def check(self) -> EvidenceCfg:
        if self.enabled and self.num_prototypes < 2:
            raise ValueError(f'evidence_cfg.num_prototypes must be >= 2, not {self.num_prototypes}')
        return self


def _normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and validate every section, so bad configs fail before a job starts."""
    config = copy.deepcopy(config)
    known = {
        'name',
        'embed_dim',
        'vision_cfg',
        'text_cfg',
        'head_cfg',
        'evidence_cfg',
        'init_logit_scale',
        'recipe',
        'window',  # the HU window(s), one per input channel: the model applies them (prepare_image)
    }
    check_keys(config, known)
    embed_dim = config.get('embed_dim')
    if not isinstance(embed_dim, int) or embed_dim < 1:
        raise ValueError(f'embed_dim must be a positive integer, not {embed_dim!r}')
    if not isinstance(config.get('vision_cfg'), dict) or 'arch' not in config['vision_cfg']:
        raise ValueError(
            f"vision_cfg must be a dict with an 'arch' key, not {config.get('vision_cfg')!r}"
        )
    config['text_cfg'] = TextCfg.from_dict(config.get('text_cfg') or {}).to_dict()
    config['head_cfg'] = asdict(
        _dataclass_from_dict(HeadCfg, config.get('head_cfg'), 'head_cfg').check()
    )
    evidence = _dataclass_from_dict(EvidenceCfg, config.get('evidence_cfg'), 'evidence_cfg').check()
    config['evidence_cfg'] = asdict(evidence)
    config.setdefault('init_logit_scale', math.log(1 / 0.07))
    if config.get('window') is not None:
        check_window(config['window'], config)
    return config


def check_window(spec: Any, config: dict[str, Any]) -> None:
    """A window stack gives one channel per window; the model's image tower must take that many."""
    from ctclip.data.transforms import parse_window

    in_chans = int(config['vision_cfg'].get('in_chans', 1))
    window = parse_window(spec)
    if window.channels != in_chans:
        raise ValueError(
            f'the image tower takes {in_chans} input channel(s) but the window gives '
            f'{window.channels} ({window}); make data.window and vision_cfg.in_chans agree'
        )


class CTClip(nn.Module):
    """The two-tower model. Build it with `ctclip.factory.create_model(name)`.

    Example:
        >>> model = create_model('resnet3d-tiny-tinybert')
        >>> out = model(image=torch.zeros(2, 1, 48, 96, 96), **model.tokenize(['Emphysema.', 'Normal.']))
        >>> out['image_features'].shape, out['text_features'].shape
    """

    def __init__(
        self, config: dict[str, Any], _saved_text: tuple[dict, Path] | None = None
    ) -> None:
        super().__init__()
        self.config = _normalize_config(config)
        embed_dim = self.config['embed_dim']
        self.visual = build_image_tower(self.config['vision_cfg'])
        self.text = TextTower(TextCfg(**self.config['text_cfg']), saved=_saved_text)
        self.image_proj = nn.Linear(self.visual.width, embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(self.config['init_logit_scale'])))
        head = HeadCfg(**self.config['head_cfg'])
        self.classifier = nn.Linear(embed_dim, head.num_classes) if head.type != 'none' else None
        evidence = EvidenceCfg(**self.config['evidence_cfg'])
        self.prototypes = None
        if evidence.enabled:
            self.prototypes = nn.Parameter(
                torch.randn(evidence.num_prototypes, embed_dim) / math.sqrt(embed_dim)
            )
        self.channels_last = False
        if self.config['vision_cfg'].get('grad_checkpointing'):
            self.visual.set_grad_checkpointing(True)

    # ---- encoding -------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.text.tokenizer

    def tokenize(
        self, texts: list[str], max_length: int | None = None, padding: str | bool = 'longest'
    ):
        """Tokenize report texts to `input_ids` and `attention_mask` ([B, L] long tensors)."""
        return self.text.tokenize(texts, max_length=max_length, padding=padding)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def _head(self, projected: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
        return self.classifier(
            projected if self.config['head_cfg']['input'] == 'projected' else normalized
        )

    def set_channels_last(self, enable: bool = True) -> None:
        """Lay the image out NDHWC after the window; the convolutions follow their input's layout
        (the weights stay contiguous: DeepSpeed views them as flat buffers)."""
        self.channels_last = enable

    def prepare_image(self, image: torch.Tensor, window: Any = None) -> torch.Tensor:
        """The model's first operation: an integer image is HU [B, 1, D, H, W] and gets the HU
        window here, on the model's device (the loader ships int16: half the bytes of float32 and
        no float work on the host); a floating-point image is taken as already windowed.

        `window` overrides the config's (`window`, one per input channel).
        """
        if image.ndim != 5:
            raise ValueError(f'image must be [B, C, D, H, W], not shape {list(image.shape)}')
        if not image.is_floating_point():
            from ctclip.data.transforms import parse_window, window_batch

            spec = window if window is not None else self.config.get('window')
            if spec is None:
                raise ValueError(
                    f'image must be windowed floats or come with a window: it is {image.dtype} HU '
                    'and the model config names no window (pass window=)'
                )
            image = window_batch(parse_window(spec), image)
        dtype = self.image_proj.weight.dtype  # bf16 where DeepSpeed holds bf16 weights
        if image.dtype != dtype:
            image = image.to(dtype)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return image

    def encode_image(self, image: torch.Tensor, window: Any = None) -> dict[str, torch.Tensor]:
        pooled, tokens = self.visual(self.prepare_image(image, window))
        projected = self.image_proj(pooled)
        features = F.normalize(projected, dim=-1)
        out = {
            'image_features': features,
            'image_tokens': F.normalize(self.image_proj(tokens), dim=-1),
        }
        if self.classifier is not None:
            out['image_logits'] = self._head(projected, features)
        return out

    def encode_image_grid(self, image: torch.Tensor, window: Any = None) -> torch.Tensor:
        """L2-normalised spatial tokens in the joint space as a grid [B, E, d, h, w]: the same
        tokens as `image_tokens`, placed where they sit in the input (phrase grounding)."""
        grid = self.visual.forward_grid(self.prepare_image(image, window))
        tokens = self.image_proj(grid.movedim(1, -1))
        return F.normalize(tokens, dim=-1).movedim(-1, 1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict:
        projected = self.text_proj(self.text(input_ids, attention_mask))
        features = F.normalize(projected, dim=-1)
        out = {'text_features': features}
        if self.classifier is not None and self.config['head_cfg']['type'] == 'shared':
            out['text_logits'] = self._head(projected, features)
        return out

    def encode_evidence(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, M, Le] quotes -> [B, M, E]; empty slots (all-zero mask) stay zero and cost nothing."""
        if input_ids.ndim != 3:
            raise ValueError(
                f'evidence_input_ids must be [B, M, L], not shape {list(input_ids.shape)}'
            )
        b, m, length = input_ids.shape
        ids, mask = input_ids.reshape(b * m, length), attention_mask.reshape(b * m, length)
        valid = mask.sum(-1) > 0
        out = self.text_proj.weight.new_zeros(b * m, self.config['embed_dim'])
        if valid.any():
            projected = self.text_proj(self.text(ids[valid], mask[valid]))
            out = out.index_put(
                (valid.nonzero(as_tuple=True)[0],), F.normalize(projected, dim=-1).to(out.dtype)
            )
        return out.reshape(b, m, -1)

    def forward(
        self,
        image: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        evidence_input_ids: torch.Tensor | None = None,
        evidence_attention_mask: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {'logit_scale': self.logit_scale.exp().clamp(max=100.0)}
        if prompt_input_ids is not None:  # [P, L] zero-shot prompts (the `prompt` loss term)
            text = self.encode_text(prompt_input_ids, prompt_attention_mask)
            out['prompt_features'] = text['text_features']
        if image is not None:
            out.update(self.encode_image(image))
        if input_ids is not None:
            out.update(self.encode_text(input_ids, attention_mask))
        if evidence_input_ids is not None:
            if evidence_attention_mask is None:
                evidence_attention_mask = (evidence_input_ids != 0).long()
            out['evidence_features'] = self.encode_evidence(
                evidence_input_ids, evidence_attention_mask
            )
        if self.prototypes is not None:
            out['prototypes'] = F.normalize(self.prototypes, dim=-1)
        return out

    # ---- saving and loading ---------------------------------------------------------------
    def save_pretrained(
        self, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """Write config.json, model.safetensors, text_config.json and tokenizer/ (no pickle).

        Args:
            directory: created if missing; files are replaced atomically one by one.
            state_dict: weights to write instead of this module's (e.g. consolidated ZeRO-3 shards).
        """
        state = state_dict if state_dict is not None else self.state_dict()
        return save_model_dir(
            Path(directory), self.config, state, self.text.encoder_config(), self.tokenizer
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location: str | torch.device = 'cpu'
    ) -> CTClip:
        """Load a folder written by `save_pretrained`; needs no network and no original text folder."""
        config, text_config, state = read_model_dir(Path(directory), map_location)
        model = cls(config, _saved_text=(text_config, Path(directory) / TOKENIZER_DIR))
        model.load_state_dict(state, strict=True)
        return model

    def init_from(
        self, source: str | os.PathLike | dict[str, torch.Tensor], strict: bool = False
    ) -> dict:
        """Copy matching weights (same name and shape) from an exported model dir, a .safetensors
        file or a state dict; stage 2 starts from a stage-1 export this way.

        Returns a report with `loaded`, `missing`, `unexpected` and `mismatched` key lists.
        """
        state = source if isinstance(source, dict) else load_state(Path(source))
        own = self.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        report = {
            'loaded': sorted(matched),
            'missing': sorted(set(own) - set(state)),
            'unexpected': sorted(set(state) - set(own)),
            'mismatched': sorted(k for k in state if k in own and own[k].shape != state[k].shape),
        }
        if strict and (report['missing'] or report['unexpected'] or report['mismatched']):
            problems = {k: v[:5] for k, v in report.items() if k != 'loaded' and v}
            raise ValueError(f'init_from(strict=True) found differences: {json.dumps(problems)}')
        self.load_state_dict(matched, strict=False)
        _logger.info(
            'init_from: loaded %d tensors, %d missing, %d unexpected, %d shape-mismatched',
            len(matched),
            len(report['missing']),
            len(report['unexpected']),
            len(report['mismatched']),
        )
        return report
