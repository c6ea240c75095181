"""Text towers: the packaged MiniLM, a CXR-BERT-style folder (mapped and remote code), offline only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctclip.factory import create_model
from ctclip.model import CTClip
from ctclip.towers.text import TextCfg, TextTower, minilm_dir

TINY_VISION = {'block_inplanes': [4, 8, 8, 8]}
WORDS = [
    'emphysema',
    'nodule',
    'lung',
    'right',
    'upper',
    'lobe',
    'is',
    'present',
    'mm',
    '5',
    'a',
    'in',
    'the',
    '.',
]

REMOTE_CONFIG = """
from transformers import BertConfig


class CXRBertConfig(BertConfig):
    model_type = 'cxr-bert'

    def __init__(self, projection_size: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.projection_size = projection_size
"""

REMOTE_MODEL = """
from torch import nn
from transformers import BertForMaskedLM

from .configuration_cxrbert import CXRBertConfig


class CXRBertModel(BertForMaskedLM):
    config_class = CXRBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.cls_projection_head = nn.Linear(config.hidden_size, config.projection_size)
"""


def _write_cxr_bert_folder(folder: Path, with_remote_code: bool = False) -> dict[str, torch.Tensor]:
    """A small folder laid out like microsoft/BiomedVLP-CXR-BERT-specialized (pytorch_model.bin, custom type)."""
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True)
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS]
    (folder / 'vocab.txt').write_text('\n'.join(vocab) + '\n', encoding='utf-8')
    (folder / 'tokenizer_config.json').write_text(
        json.dumps({'do_lower_case': True, 'model_max_length': 512}), encoding='utf-8'
    )
    params = {
        'vocab_size': len(vocab),
        'hidden_size': 32,
        'num_hidden_layers': 2,
        'num_attention_heads': 2,
        'intermediate_size': 64,
    }
    torch.manual_seed(3)
    mlm = BertForMaskedLM(BertConfig(**params))
    state = {k: v.clone() for k, v in mlm.state_dict().items()}
    state['cls_projection_head.weight'] = torch.randn(16, 32)
    state['cls_projection_head.bias'] = torch.zeros(16)
    torch.save(state, folder / 'pytorch_model.bin')
    config = {
        **params,
        'architectures': ['CXRBertModel'],
        'auto_map': {
            'AutoConfig': 'configuration_cxrbert.CXRBertConfig',
            'AutoModel': 'modeling_cxrbert.CXRBertModel',
        },
        'model_type': 'cxr-bert',
        'projection_size': 16,
    }
    (folder / 'config.json').write_text(json.dumps(config), encoding='utf-8')
    if with_remote_code:
        (folder / 'configuration_cxrbert.py').write_text(REMOTE_CONFIG, encoding='utf-8')
        (folder / 'modeling_cxrbert.py').write_text(REMOTE_MODEL, encoding='utf-8')
    return {k.removeprefix('bert.'): v for k, v in state.items() if k.startswith('bert.')}


def _encoder_matches(tower: TextTower, expected: dict[str, torch.Tensor]) -> None:
    own = tower.encoder.state_dict()
    for key, value in expected.items():
        if key in own:
            assert torch.equal(own[key], value), key
    assert 'encoder.layer.1.output.dense.weight' in own


def test_default_text_tower_is_the_packaged_minilm():
    from safetensors.torch import load_file

    tower = TextTower(TextCfg(source='minilm', pooling='mean'))
    shipped = load_file(str(minilm_dir() / 'model.safetensors'))
    key = next(k for k in shipped if k.endswith('embeddings.word_embeddings.weight'))
    assert torch.equal(tower.encoder.embeddings.word_embeddings.weight, shipped[key])
    assert tower.width == 384 and tower.encoder.pooler is None


def test_mean_pooling_ignores_padding():
    tower = TextTower(TextCfg(source='random', width=16, layers=1, heads=2, pooling='mean')).eval()
    short = tower.tokenize(['emphysema'])
    padded = tower.tokenize(['emphysema'], max_length=12, padding='max_length')
    with torch.no_grad():
        a = tower(short['input_ids'], short['attention_mask'])
        b = tower(padded['input_ids'], padded['attention_mask'])
    assert torch.allclose(a, b, atol=1e-5)


def test_cxr_bert_folder_maps_onto_a_stock_bert_without_remote_code(tmp_path):
    expected = _write_cxr_bert_folder(tmp_path / 'cxr-bert')
    model = create_model(
        'resnet3d-18-cxrbert',
        vision_cfg=TINY_VISION,
        **{'text_cfg.path': str(tmp_path / 'cxr-bert')},
    )
    _encoder_matches(model.text, expected)
    assert type(model.text.encoder).__name__ == 'BertModel'
    tokens = model.tokenize(['Emphysema is present in the right upper lobe.'])
    assert tokens['input_ids'][0, 0].item() == model.tokenizer.cls_token_id
    assert model.tokenizer.unk_token_id not in tokens['input_ids'][0, 1:-1].tolist()
    # The export needs neither the original folder nor remote code.
    model.save_pretrained(tmp_path / 'export')
    (tmp_path / 'cxr-bert' / 'pytorch_model.bin').unlink()
    loaded = CTClip.from_pretrained(tmp_path / 'export')
    _encoder_matches(loaded.text, expected)


def test_cxr_bert_with_trust_remote_code_uses_its_own_classes(tmp_path):
    expected = _write_cxr_bert_folder(tmp_path / 'cxr-bert', with_remote_code=True)
    cfg = TextCfg(source='hf', path=str(tmp_path / 'cxr-bert'), trust_remote_code=True)
    tower = TextTower(cfg)
    _encoder_matches(tower, expected)


def test_a_model_that_is_not_downloaded_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf-home'))
    with pytest.raises(
        FileNotFoundError, match='not in the local Hugging Face cache.*text_cfg.path=DIR'
    ):
        TextTower(TextCfg(source='hf', hf_model_name='microsoft/BiomedVLP-CXR-BERT-specialized'))
    with pytest.raises(FileNotFoundError, match='must be a folder with config.json'):
        TextTower(TextCfg(source='hf', path=str(tmp_path)))
    with pytest.raises(ValueError, match='needs text_cfg.path'):
        TextTower(TextCfg(source='hf'))


def test_a_partial_lock_leaves_only_the_top_layers_trainable():
    tower = TextTower(TextCfg(source='minilm', freeze=True, unlocked_layers=2))
    trainable = {n.split('.')[2] for n, p in tower.encoder.named_parameters() if p.requires_grad}
    assert trainable == {'4', '5'}  # of MiniLM's six layers; embeddings frozen too
    frozen = TextTower(TextCfg(source='minilm', freeze=True))
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError, match='unlocked_layers must be <= the 6 layers'):
        TextTower(TextCfg(source='minilm', freeze=True, unlocked_layers=7))
    with pytest.raises(ValueError, match='unlocked_layers must be >= 0'):
        TextCfg.from_dict({'unlocked_layers': -1})
