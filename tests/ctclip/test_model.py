"""CTClip forward contract, safe save/load, stage-2 initialisation."""

from __future__ import annotations

import json

import pytest
import torch

from ctclip.factory import create_model
from ctclip.model import CTClip

TINY = {
    'vision_cfg': {'block_inplanes': [4, 8, 8, 8]},
    'evidence_cfg': {'enabled': True, 'num_prototypes': 6},
}
IMAGE_SHAPE = (2, 1, 16, 32, 32)


@pytest.fixture(scope='module')
def model() -> CTClip:
    torch.manual_seed(0)
    return create_model('resnet3d-tiny-tinybert', **TINY).eval()


@pytest.fixture(scope='module')
def inputs(model) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    tokens = model.tokenize(['Emphysema is present.', 'A 5 mm nodule in the right upper lobe.'])
    quotes = model.tokenize(
        ['Emphysema: emphysema', 'Lung nodule: 5 mm nodule', ''],
        max_length=12,
        padding='max_length',
    )
    ev_ids = torch.zeros(2, 2, 12, dtype=torch.long)
    ev_mask = torch.zeros(2, 2, 12, dtype=torch.long)
    ev_ids[0, 0], ev_mask[0, 0] = quotes['input_ids'][0], quotes['attention_mask'][0]
    ev_ids[1, :2], ev_mask[1, :2] = quotes['input_ids'][:2], quotes['attention_mask'][:2]
    return {
        'image': torch.randn(IMAGE_SHAPE),
        **tokens,
        'evidence_input_ids': ev_ids,
        'evidence_attention_mask': ev_mask,
    }


def _unit_norm(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5)


def test_forward_returns_the_contract_shapes_normalised(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    e = model.config['embed_dim']
    assert out['image_features'].shape == (2, e) and _unit_norm(out['image_features'])
    assert out['text_features'].shape == (2, e) and _unit_norm(out['text_features'])
    assert out['image_logits'].shape == (2, 18) and out['text_logits'].shape == (2, 18)
    assert out['image_tokens'].shape[0::2] == (2, e) and _unit_norm(out['image_tokens'])
    assert out['evidence_features'].shape == (2, 2, e)
    assert out['prototypes'].shape == (6, e) and _unit_norm(out['prototypes'])
    assert out['logit_scale'].ndim == 0 and out['logit_scale'].item() == pytest.approx(
        1 / 0.07, rel=1e-4
    )


def test_empty_evidence_slots_are_zero_and_filled_ones_match_text_encoding(model, inputs):
    with torch.no_grad():
        ev = model(
            evidence_input_ids=inputs['evidence_input_ids'],
            evidence_attention_mask=inputs['evidence_attention_mask'],
        )
        direct = model.encode_text(
            inputs['evidence_input_ids'][1], inputs['evidence_attention_mask'][1]
        )
    features = ev['evidence_features']
    assert torch.count_nonzero(features[0, 1]) == 0
    assert _unit_norm(features[1]) and _unit_norm(features[0, :1])
    assert torch.allclose(features[1], direct['text_features'], atol=1e-5)


def test_only_requested_outputs_are_returned(model, inputs):
    with torch.no_grad():
        text_only = model(input_ids=inputs['input_ids'], attention_mask=inputs['attention_mask'])
        nothing = model()
    assert 'image_features' not in text_only and 'text_features' in text_only
    assert set(nothing) == {'logit_scale', 'prototypes'}


def test_logit_scale_is_clamped_at_100(model):
    clone = create_model('resnet3d-tiny-tinybert', init_logit_scale=10.0, **TINY)
    assert clone().get('logit_scale').item() == pytest.approx(100.0)


def test_image_only_head_gives_no_text_logits():
    model = create_model('resnet3d-tiny-tinybert', head_cfg={'type': 'image'}, **TINY)
    out = model(**model.tokenize(['x']))
    assert 'text_logits' not in out
    none = create_model('resnet3d-tiny-tinybert', head_cfg={'type': 'none'}, **TINY)
    assert 'image_logits' not in none(image=torch.zeros(IMAGE_SHAPE))


def test_bad_image_rank_is_a_clear_error(model):
    with pytest.raises(
        ValueError, match=r'image must be \[B, C, D, H, W\], not shape \[1, 16, 32, 32\]'
    ):
        model(image=torch.zeros(1, 16, 32, 32))


def test_tokenize_respects_max_length_and_rejects_a_bare_string(model):
    tokens = model.tokenize(['word ' * 300])
    assert tokens['input_ids'].shape[1] == model.config['text_cfg']['context_length']
    assert model.tokenize(['a b c d e f'], max_length=4)['input_ids'].shape == (1, 4)
    with pytest.raises(TypeError, match='list of strings'):
        model.tokenize('Emphysema.')


def test_gradients_reach_every_trainable_part(inputs):
    torch.manual_seed(0)
    model = create_model('resnet3d-tiny-tinybert', **TINY).train()
    out = model(**inputs)
    total = out['image_features'].sum() + out['text_features'].sum() + out['image_logits'].sum()
    total = (
        total
        + out['text_logits'].sum()
        + out['logit_scale']
        + out['prototypes'].sum()
        + out['evidence_features'].sum()
    )
    total.backward()
    for name in (
        'visual.stem.0.weight',
        'text.encoder.embeddings.word_embeddings.weight',
        'image_proj.weight',
        'text_proj.weight',
        'classifier.weight',
        'logit_scale',
        'prototypes',
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.count_nonzero(grad) > 0, name


def test_grad_checkpointing_gives_the_same_gradients(inputs):
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = create_model('resnet3d-tiny-tinybert', **TINY).train()
        model.set_grad_checkpointing(enable)
        out = model(
            image=inputs['image'].requires_grad_(False),
            input_ids=inputs['input_ids'],
            attention_mask=inputs['attention_mask'],
        )
        (out['image_features'].square().sum() + out['text_features'][:, 0].sum()).backward()
        grads.append(
            torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        )
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ---- saving and loading ------------------------------------------------------------------------
def test_save_and_load_round_trip_without_pickle(model, inputs, tmp_path):
    model.save_pretrained(tmp_path / 'export')
    files = sorted(
        p.relative_to(tmp_path / 'export').as_posix()
        for p in (tmp_path / 'export').rglob('*')
        if p.is_file()
    )
    assert 'model.safetensors' in files and 'config.json' in files and 'text_config.json' in files
    assert any(f.startswith('tokenizer/') for f in files)
    assert not [f for f in files if f.endswith(('.bin', '.pt', '.pkl', '.pth'))]
    loaded = CTClip.from_pretrained(tmp_path / 'export').eval()
    with torch.no_grad():
        a, b = model(**inputs), loaded(**inputs)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert loaded.config == model.config
    assert (
        loaded.tokenize(['Emphysema.'])['input_ids'].tolist()
        == model.tokenize(['Emphysema.'])['input_ids'].tolist()
    )


def test_save_pretrained_accepts_an_external_state_dict(model, tmp_path):
    state = {
        k: torch.zeros_like(v) if k == 'logit_scale' else v for k, v in model.state_dict().items()
    }
    model.save_pretrained(tmp_path / 'export', state_dict=state)
    assert CTClip.from_pretrained(tmp_path / 'export').logit_scale.item() == 0.0


def test_from_pretrained_rejects_foreign_and_incomplete_folders(model, tmp_path):
    with pytest.raises(FileNotFoundError, match='not a ctclip model folder'):
        CTClip.from_pretrained(tmp_path)
    (tmp_path / 'config.json').write_text(
        json.dumps({'architectures': ['BertModel']}), encoding='utf-8'
    )
    with pytest.raises(ValueError, match='is not a ctclip model config'):
        CTClip.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / 'export')
    (tmp_path / 'export' / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match='model.safetensors is missing'):
        CTClip.from_pretrained(tmp_path / 'export')


def test_init_from_copies_matching_weights_and_reports_the_rest(model, tmp_path):
    model.save_pretrained(tmp_path / 'stage1')
    wider = create_model('resnet3d-tiny-tinybert', embed_dim=32, **TINY)
    report = wider.init_from(tmp_path / 'stage1')
    assert (
        'image_proj.weight' in report['mismatched'] and 'visual.stem.0.weight' in report['loaded']
    )
    assert torch.equal(wider.visual.stem[0].weight, model.visual.stem[0].weight)
    with pytest.raises(ValueError, match='init_from\\(strict=True\\) found differences'):
        wider.init_from(tmp_path / 'stage1', strict=True)
    same = create_model(
        'resnet3d-tiny-tinybert', pretrained=tmp_path / 'stage1' / 'model.safetensors', **TINY
    )
    assert torch.equal(same.image_proj.weight, model.image_proj.weight)
    with pytest.raises(ValueError, match='reads .safetensors only'):
        same.init_from(tmp_path / 'stage1' / 'config.json')
