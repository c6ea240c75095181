"""Each loss term on small hand-checkable cases, plus a real 2-process gloo run of the gathered terms."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ctclip.losses import (
    ClipLoss,
    EvidenceLoss,
    MultiPositiveLoss,
    TokenEvidenceLoss,
    balanced_pos_weight,
    create_loss,
    masked_bce,
    soft_jaccard,
)


def _features(n: int, e: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, e, generator=g), dim=-1),
        F.normalize(torch.randn(n, e, generator=g), dim=-1),
    )


# ---- masked BCE ----------------------------------------------------------------------------
def test_masked_bce_ignores_uncertain_labels():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0]])
    known = targets >= 0
    expected = F.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert torch.allclose(masked_bce(logits, targets), expected)


def test_masked_bce_changing_an_uncertain_logit_changes_nothing():
    targets = torch.tensor([[1.0, -1.0]])
    a = masked_bce(torch.tensor([[1.0, 5.0]]), targets)
    b = masked_bce(torch.tensor([[1.0, -7.0]]), targets)
    assert torch.equal(a, b)


def test_masked_bce_uncertain_as_positive_keeps_unlabelled_rows_masked():
    logits = torch.zeros(2, 2)
    targets = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
    value = masked_bce(logits, targets, uncertain='positive')
    assert torch.allclose(value, torch.tensor(math.log(2.0)))  # only row 0, both entries as 1
    logits = torch.tensor([[0.0, 4.0], [9.0, 9.0]])
    expected = F.binary_cross_entropy_with_logits(logits[0], torch.ones(2))
    assert torch.allclose(masked_bce(logits, targets, uncertain='positive'), expected)


def test_masked_bce_row_mask_and_soft_pseudo_labels():
    logits = torch.tensor([[0.3, -0.2], [5.0, 5.0]])
    targets = torch.tensor([[0.7, 0.1], [0.0, 0.0]])
    value = masked_bce(logits, targets, row_mask=torch.tensor([True, False]))
    assert torch.allclose(value, F.binary_cross_entropy_with_logits(logits[0], targets[0]))


def test_masked_bce_with_nothing_known_is_zero_and_keeps_the_graph():
    logits = torch.zeros(2, 3, requires_grad=True)
    value = masked_bce(logits, -torch.ones(2, 3))
    value.backward()
    assert value.item() == 0.0 and logits.grad is not None


def test_bce_term_weights_pseudo_rows_and_adds_the_text_side():
    loss = create_loss({'bce': {'weight': 2.0, 'pseudo_weight': 0.5, 'text': True}})
    logits = torch.tensor([[1.0], [-1.0]])
    batch = {
        'image_labels': torch.tensor([[1.0], [1.0]]),
        'image_labels_are_pseudo': torch.tensor([False, True]),
        'text_labels': torch.tensor([[0.0], [-1.0]]),
        'has_text': torch.tensor([True, True]),
    }
    out = loss({'image_logits': logits, 'text_logits': logits}, batch)
    per = F.binary_cross_entropy_with_logits(logits[:, 0], torch.ones(2), reduction='none')
    assert torch.allclose(out['bce'], (per[0] + 0.5 * per[1]) / 2)
    assert torch.allclose(
        out['bce_text'], F.binary_cross_entropy_with_logits(logits[0], torch.zeros(1))
    )
    assert torch.allclose(out['loss'], 2 * out['bce'] + 2 * out['bce_text'])


def test_bce_pos_weight_scales_each_class_positive_term_only():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    loss = create_loss({'bce': {'pos_weight': [3.0, 0.5]}})
    out = loss({'image_logits': logits}, {'image_labels': targets})
    weights = torch.tensor([3.0, 0.5])
    per = -(weights * targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
    known = targets >= 0
    assert torch.allclose(out['bce'], per[known].mean())
    one = create_loss({'bce': {'pos_weight': 2.0}})(
        {'image_logits': logits}, {'image_labels': targets}
    )
    both = create_loss({'bce': {'pos_weight': [2.0, 2.0]}})(
        {'image_logits': logits}, {'image_labels': targets}
    )
    assert torch.equal(one['bce'], both['bce'])


def test_bce_pos_weight_errors_name_the_setting():
    batch = {'image_labels': torch.ones(1, 3)}
    with pytest.raises(ValueError, match="pos_weight 'balanced' must be resolved"):
        create_loss({'bce': {'pos_weight': 'balanced'}})({'image_logits': torch.zeros(1, 3)}, batch)
    with pytest.raises(ValueError, match='2 values for 3 classes'):
        create_loss({'bce': {'pos_weight': [1.0, 2.0]}})({'image_logits': torch.zeros(1, 3)}, batch)


def test_balanced_pos_weight_is_the_clipped_square_root_of_the_class_ratio():
    labels = np.array([[1, 0, 1, -1], [0, 0, 1, -1], [0, 0, 1, 1], [0, 1, 0, -1], [0, 0, 1, 0]])
    # class 0: 1 positive, 4 negatives -> 2; class 1: 1/4 -> 2; class 2: 4 positives, 1 negative
    # -> 0.5, clipped to 1; class 3: 1 positive, 1 negative (the -1 do not count) -> 1
    assert balanced_pos_weight(labels) == [2.0, 2.0, 1.0, 1.0]
    rare = np.array([[1]] + [[0]] * 99)
    assert balanced_pos_weight(rare) == [5.0]  # sqrt(99) = 9.95, capped
    assert balanced_pos_weight(np.zeros((4, 1))) == [5.0]  # no positive known: the cap


def test_text_bce_uses_only_unpaired_reports_by_default():
    loss = create_loss({'text_bce': 1.0})
    logits = torch.tensor([[3.0], [-1.0]])
    batch = {'text_labels': torch.ones(2, 1), 'paired': torch.tensor([True, False])}
    out = loss({'text_logits': logits}, batch)
    assert torch.allclose(
        out['text_bce'], F.binary_cross_entropy_with_logits(logits[1], torch.ones(1))
    )


# ---- CLIP -----------------------------------------------------------------------------------
def test_clip_loss_matches_symmetric_cross_entropy_over_paired_rows():
    image, text = _features(5)
    paired = torch.tensor([True, False, True, True, False])
    out = ClipLoss()(
        {'image_features': image, 'text_features': text, 'logit_scale': torch.tensor(10.0)},
        {'paired': paired},
    )
    i, t = image[paired], text[paired]
    logits = 10.0 * i @ t.T
    labels = torch.arange(3)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out['clip'], expected)


def test_clip_loss_without_pairs_is_zero():
    image, text = _features(3)
    outputs = {
        'image_features': image.requires_grad_(),
        'text_features': text,
        'logit_scale': torch.tensor(5.0),
    }
    value = ClipLoss()(outputs, {'paired': torch.zeros(3, dtype=torch.bool)})['clip']
    assert value.item() == 0.0
    value.backward()


def test_clip_loss_is_low_for_aligned_and_high_for_shuffled_pairs():
    image, _ = _features(6)
    outputs = {'image_features': image, 'text_features': image, 'logit_scale': torch.tensor(50.0)}
    aligned = ClipLoss()(outputs, {})['clip']
    shuffled = ClipLoss()({**outputs, 'text_features': image.roll(1, 0)}, {})['clip']
    assert aligned < 0.01 < 1.0 < shuffled


# ---- multi-positive ---------------------------------------------------------------------------
def test_soft_jaccard_of_identical_and_empty_label_sets_is_one():
    a = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    overlap = soft_jaccard(a, a)
    assert torch.allclose(overlap.diagonal(), torch.ones(3))
    assert overlap[0, 2] == pytest.approx(1 / 3)
    assert overlap[1, 0] == 0.0


def test_multi_positive_with_identical_labels_gives_equal_targets():
    image, text = _features(4, seed=3)
    labels = torch.tensor([[1.0, 0.0, 1.0]]).repeat(4, 1)
    batch = {'image_labels': labels, 'text_labels': labels}
    outputs = {'image_features': image, 'text_features': text, 'logit_scale': torch.tensor(7.0)}
    value = MultiPositiveLoss()(outputs, batch)['multi_positive']
    logits = 7.0 * image @ text.T
    uniform = torch.full((4, 4), 0.25)
    i2t = -(uniform * F.log_softmax(logits, 1)).sum(1).mean()
    t2i = -(uniform * F.log_softmax(logits.T, 1)).sum(1).mean()
    assert torch.allclose(value, (i2t + t2i) / 2)


def test_multi_positive_reduces_to_clip_when_label_sets_are_disjoint():
    image, text = _features(3, seed=4)
    labels = torch.eye(3)
    outputs = {'image_features': image, 'text_features': text, 'logit_scale': torch.tensor(4.0)}
    batch = {'image_labels': labels, 'text_labels': labels}
    mp_value = MultiPositiveLoss()(outputs, batch)['multi_positive']
    assert torch.allclose(mp_value, ClipLoss()(outputs, batch)['clip'])


def test_multi_positive_lets_unpaired_images_with_pseudo_labels_count():
    image, text = _features(2, seed=5)
    outputs = {
        'image_features': image.requires_grad_(),
        'text_features': text,
        'logit_scale': torch.tensor(3.0),
    }
    batch = {
        'image_labels': torch.tensor([[-1.0, -1.0], [0.9, 0.1]]),  # row 0 has no image labels
        'text_labels': torch.tensor([[1.0, 0.0], [-1.0, -1.0]]),  # row 1 has no report labels
        'has_image': torch.tensor([False, True]),
        'has_text': torch.tensor([True, False]),
        'paired': torch.tensor([False, False]),
    }
    value = MultiPositiveLoss()(outputs, batch)['multi_positive']
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)  # one query, one key: a 1x1 softmax
    assert image.grad is not None


# ---- evidence ---------------------------------------------------------------------------------
def _evidence_case(tokens: torch.Tensor, evidence: torch.Tensor, prototypes: torch.Tensor):
    b = tokens.shape[0]
    outputs = {
        'image_tokens': F.normalize(tokens, dim=-1),
        'evidence_features': F.normalize(evidence, dim=-1),
        'prototypes': F.normalize(prototypes, dim=-1),
    }
    batch = {
        'evidence_mask': torch.ones(evidence.shape[:2], dtype=torch.bool),
        'paired': torch.ones(b, dtype=torch.bool),
    }
    return outputs, batch


def test_evidence_kl_is_zero_when_assignments_match():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3, 8, generator=g)
    outputs, batch = _evidence_case(tokens, tokens.clone(), torch.randn(4, 8, generator=g))
    for direction in ('report_to_image', 'image_to_report'):
        out = EvidenceLoss(kl_direction=direction)(outputs, batch)
        assert out['evidence'].item() == pytest.approx(0.0, abs=1e-6)


def test_evidence_kl_is_positive_when_assignments_differ_and_report_is_the_teacher():
    prototypes = torch.eye(4, 8)
    tokens = prototypes[0].expand(2, 3, 8).clone().requires_grad_()
    evidence = prototypes[1].expand(2, 2, 8).clone().requires_grad_()
    outputs, batch = _evidence_case(tokens, evidence, prototypes)
    out = EvidenceLoss(entropy_weight=0.0)(outputs, batch)
    assert out['evidence'].item() > 1.0
    out['evidence'].backward()
    assert tokens.grad is not None and torch.count_nonzero(tokens.grad) > 0
    assert evidence.grad is None  # stop-grad: the report is the teacher


def test_evidence_masks_empty_slots_and_unpaired_rows():
    prototypes = torch.eye(4, 8)
    tokens = prototypes[0].expand(2, 1, 8).clone()
    evidence = torch.stack([prototypes[0], prototypes[3]]).expand(2, 2, 8).clone()
    outputs, batch = _evidence_case(tokens, evidence, prototypes)
    batch['evidence_mask'] = torch.tensor([[True, False], [True, True]])
    batch['paired'] = torch.tensor([True, False])
    out = EvidenceLoss(entropy_weight=0.0)(outputs, batch)
    assert out['evidence'].item() == pytest.approx(
        0.0, abs=1e-6
    )  # row 0 matches; row 1 is unpaired


def test_entropy_term_penalises_prototype_collapse():
    k = 4
    prototypes = torch.eye(k, 8)
    collapsed = prototypes[0].expand(2, 4, 8).clone()
    spread = prototypes.expand(2, 4, 8).clone()
    loss = EvidenceLoss(temperature=0.01)
    high = loss(*_evidence_case(collapsed, collapsed.clone(), prototypes))['evidence_entropy']
    low = loss(*_evidence_case(spread, spread.clone(), prototypes))['evidence_entropy']
    assert high.item() == pytest.approx(math.log(k), abs=1e-3)
    assert low.item() == pytest.approx(0.0, abs=1e-3)


def _token_case(tokens, quotes, finding, labels):
    """Images [B, N, E] and one quote per image [B, E] of `finding` [B]; image labels [B, C]."""
    outputs = {
        'image_tokens': F.normalize(tokens, dim=-1),
        'evidence_features': F.normalize(quotes, dim=-1)[:, None],
    }
    batch = {
        'evidence_mask': torch.ones(tokens.shape[0], 1, dtype=torch.bool),
        'evidence_finding': torch.as_tensor(finding)[:, None],
        'image_labels': torch.as_tensor(labels, dtype=torch.float32),
    }
    return outputs, batch


def test_token_evidence_hand_worked_value():
    # 2 images of 2 tokens; image 0 holds the quote's direction in token 1, image 1 nowhere
    e = torch.eye(4)
    tokens = torch.stack([torch.stack([e[2], e[0]]), torch.stack([e[2], e[3]])])
    quotes = torch.stack([e[0], e[1]])
    # image 1's quote (finding 1) matches no token; labels: each image has only its own finding
    outputs, batch = _token_case(tokens, quotes, [0, 1], [[1, 0], [0, 1]])
    loss = TokenEvidenceLoss(temperature=1.0, token_temperature=1.0)
    lme = lambda c: math.log(sum(math.exp(v) for v in c) / len(c))  # noqa: E731
    s00, s01 = lme([0.0, 1.0]), lme([0.0, 0.0])  # quote 0 on images 0 and 1
    s10, s11 = lme([0.0, 0.0]), lme([0.0, 0.0])  # quote 1 on images 0 and 1
    q0 = -s00 + math.log(math.exp(s00) + math.exp(s01))
    q1 = -s11 + math.log(math.exp(s10) + math.exp(s11))
    assert loss(outputs, batch)['token_evidence'].item() == pytest.approx((q0 + q1) / 2, abs=1e-6)


def test_token_evidence_leaves_images_with_the_same_finding_out_of_the_negatives():
    g = torch.Generator().manual_seed(0)
    tokens, quotes = torch.randn(3, 5, 8, generator=g), torch.randn(3, 8, generator=g)
    loss = TokenEvidenceLoss()
    # image 1 is positive for finding 0 (the quote of image 0): for quote 0 it is no negative
    full = loss(*_token_case(tokens, quotes, [0, 1, 1], [[1, 0], [1, 1], [0, 1]]))
    outputs, batch = _token_case(tokens, quotes, [0, 1, 1], [[1, 0], [1, 1], [0, 1]])
    scores = torch.einsum(
        'qe,bne->qbn', outputs['evidence_features'][:, 0], outputs['image_tokens']
    )
    scores = (torch.logsumexp(scores / 0.05, -1) - math.log(5)) * 0.05 / 0.1
    allowed = torch.tensor([[1, 0, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    expected = F.cross_entropy(scores.masked_fill(~allowed, float('-inf')), torch.arange(3))
    assert full['token_evidence'].item() == pytest.approx(expected.item(), rel=1e-5)


def test_token_evidence_pushes_the_matching_token_most():
    g = torch.Generator().manual_seed(1)
    quotes = torch.randn(4, 8, generator=g)
    tokens = torch.randn(4, 6, 8, generator=g)
    tokens[0, 2] = quotes[0] + 0.3 * tokens[0, 2]  # the lesion token of image 0
    outputs, batch = _token_case(tokens, quotes, [0, 1, 2, 3], np.eye(4))
    batch['evidence_mask'][1:] = False  # image 0's tokens: only its own quote's gradient
    leaf = outputs['image_tokens'].detach().requires_grad_()
    outputs['image_tokens'] = leaf
    TokenEvidenceLoss()(outputs, batch)['token_evidence'].backward()
    grads = leaf.grad[0].norm(dim=-1)
    assert int(grads.argmax()) == 2 and grads[2] > 10 * grads[torch.arange(6) != 2].max()


@pytest.mark.parametrize('key', ['temperature', 'token_temperature'])
def test_token_evidence_temperatures_must_be_positive(key):
    with pytest.raises(ValueError, match=f'loss.token_evidence.{key} must be > 0, not 0'):
        create_loss({'token_evidence': {'weight': 1.0, key: 0}})


def test_token_evidence_without_quotes_is_a_zero_on_the_graph():
    tokens = torch.randn(2, 3, 8, requires_grad=True)
    outputs, batch = _token_case(tokens, torch.randn(2, 8), [0, 1], [[1, 0], [0, 1]])
    batch['evidence_mask'][:] = False
    out = TokenEvidenceLoss()(outputs, batch)['token_evidence']
    out.backward()
    assert out.item() == 0.0 and tokens.grad is not None


def test_combined_evidence_total_uses_entropy_weight():
    g = torch.Generator().manual_seed(2)
    outputs, batch = _evidence_case(
        torch.randn(2, 3, 8, generator=g),
        torch.randn(2, 2, 8, generator=g),
        torch.randn(5, 8, generator=g),
    )
    out = create_loss({'evidence': {'weight': 0.5, 'entropy_weight': 0.2}})(outputs, batch)
    assert torch.allclose(out['loss'], 0.5 * out['evidence'] + 0.2 * out['evidence_entropy'])


# ---- configuration ----------------------------------------------------------------------------
def test_create_loss_validates_names_keys_and_choices():
    with pytest.raises(ValueError, match="Unknown setting 'loss.klip'.*did you mean 'loss.clip'"):
        create_loss({'klip': 1.0})
    with pytest.raises(
        ValueError, match="Unknown setting 'loss.bce.wieght'.*did you mean 'loss.bce.weight'"
    ):
        create_loss({'bce': {'wieght': 1.0}})
    with pytest.raises(ValueError, match='uncertain must be one of'):
        create_loss({'bce': {'uncertain': 'maybe'}})
    with pytest.raises(ValueError, match='kl_direction'):
        create_loss({'evidence': {'kl_direction': 'sideways'}})
    with pytest.raises(ValueError, match='at least one active term'):
        create_loss({'clip': 0.0, 'bce': {'enabled': False}})


def test_create_loss_skips_zero_weight_and_disabled_terms():
    loss = create_loss({'bce': 1.0, 'clip': 0, 'multi_positive': {'enabled': False, 'weight': 1.0}})
    assert loss.names == ['bce']


def test_world_size_without_process_group_is_an_error():
    loss = create_loss({'clip': 1.0}, rank=0, world_size=2)
    image, text = _features(2)
    with pytest.raises(RuntimeError, match='no process group'):
        loss({'image_features': image, 'text_features': text, 'logit_scale': torch.tensor(1.0)}, {})


# ---- two real processes ------------------------------------------------------------------------
_CFG = {'clip': 1.0, 'multi_positive': 0.5}


def _global_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = 7
    return {
        'x_image': torch.randn(n, 6, generator=g),
        'x_text': torch.randn(n, 5, generator=g),
        'paired': torch.tensor([1, 1, 0, 1, 1, 0, 1]).bool(),
        'has_image': torch.tensor([1, 1, 1, 1, 1, 0, 1]).bool(),
        'has_text': torch.tensor([1, 1, 1, 1, 1, 1, 1]).bool(),
        'image_labels': torch.randint(0, 2, (n, 4), generator=g).float(),
        'text_labels': torch.randint(-1, 2, (n, 4), generator=g).float(),
    }


class _Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(6, 8)
        self.text = torch.nn.Linear(5, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, batch):
        return {
            'image_features': F.normalize(self.image(batch['x_image']), dim=-1),
            'text_features': F.normalize(self.text(batch['x_text']), dim=-1),
            'logit_scale': self.logit_scale.exp(),
        }


def _loss_and_grads(batch, rank: int = 0, world_size: int = 1):
    model = _Towers()
    values = create_loss(_CFG, rank, world_size)(model(batch), batch)
    values['loss'].backward()
    grads = []
    for p in model.parameters():
        grad = p.grad.clone()
        if world_size > 1:  # what DeepSpeed / DDP do: average the gradients over ranks
            dist.all_reduce(grad)
            grad /= world_size
        grads.append(grad.reshape(-1))
    return {k: float(v.detach()) for k, v in values.items()}, torch.cat(grads)


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        full = _global_batch()
        part = slice(0, 4) if rank == 0 else slice(4, 7)  # unequal shards: 4 rows and 3 rows
        batch = {k: v[part] for k, v in full.items()}
        values, grads = _loss_and_grads(batch, rank, 2)
        np.savez(
            f'{out_dir}/rank{rank}.npz',
            grads=grads.numpy(),
            **{k: np.float64(v) for k, v in values.items()},
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_rank_gathered_losses_equal_one_rank_with_the_same_global_batch(tmp_path):
    # spawn, not fork: a forked child can inherit a held OpenMP/tokenizer lock and hang.
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    reference, ref_grads = _loss_and_grads(_global_batch())
    for rank in (0, 1):
        result = np.load(tmp_path / f'rank{rank}.npz')
        for key in ('loss', 'clip', 'multi_positive'):
            assert float(result[key]) == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key
        np.testing.assert_allclose(result['grads'], ref_grads.numpy(), rtol=1e-4, atol=1e-6)


def test_a_term_without_its_model_outputs_says_what_produces_them():
    with pytest.raises(
        KeyError,
        match="'evidence' needs model outputs 'evidence_features'.*'prototypes' .*evidence_cfg.enabled",
    ):
        create_loss({'evidence': 1.0})(
            {'image_tokens': torch.zeros(1, 2, 4)}, {'evidence_mask': torch.ones(1, 1)}
        )
    with pytest.raises(KeyError, match="'text_bce' needs model outputs 'text_logits'"):
        create_loss({'text_bce': 1.0})({}, {})


# ---- zero-shot prompt alignment --------------------------------------------------------------
def test_prompt_loss_is_the_bce_of_the_benchmarks_zero_shot_score():
    from ctclip.factory import create_model
    from ctclip.inference import zero_shot_scores
    from ctclip.losses import PromptLoss
    from ctclip.training.batch import prompt_inputs
    from llm_labeling.schema import FINDINGS

    torch.manual_seed(0)
    model = create_model('resnet3d-tiny-tinybert', vision_cfg={'block_inplanes': [4, 8, 8, 8]})
    model.eval()
    loss = create_loss({'prompt': {'weight': 1.0, 'templates': ['there-is', 'plain']}})
    tokens = prompt_inputs(loss, model)
    assert tokens['prompt_input_ids'].shape[0] == len(FINDINGS) * 2 * 2
    images = torch.randn(3, 1, 16, 32, 32)
    labels = torch.randint(0, 2, (3, len(FINDINGS))).float()
    labels[0, 0] = -1.0  # uncertain: ignored
    with torch.no_grad():
        out = model(image=images, **tokens)
        value = loss(out, {'image_labels': labels})['prompt']
        scores = zero_shot_scores(
            model, out['image_features'].numpy(), FINDINGS, ['there-is', 'plain'], 'embedding'
        )
    known = labels >= 0
    expected = F.binary_cross_entropy(
        torch.from_numpy(scores).float()[known], labels[known], reduction='mean'
    )
    torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-4)
    assert PromptLoss().texts(['Emphysema'])[:2] == [
        'There is Emphysema.',
        'There is no Emphysema.',
    ]


def test_the_engine_feeds_exactly_the_inputs_of_the_active_terms():
    from ctclip.training.batch import model_inputs

    batch = {
        k: torch.zeros(2, 3)
        for k in (
            'image',
            'input_ids',
            'attention_mask',
            'evidence_input_ids',
            'evidence_attention_mask',
        )
    }

    def keys(cfg):
        return set(model_inputs(batch, cfg, torch.device('cpu')))

    assert keys({'bce': 1.0}) == {'image'}
    # an evidence term with weight 0 still runs its entropy part, so it still needs evidence
    evidence = {'clip': 1.0, 'evidence': {'weight': 0.0, 'entropy_weight': 0.1}}
    assert {'evidence_input_ids', 'input_ids'} <= keys(evidence)
    assert {t.name for t in create_loss(evidence).terms} == {'clip', 'evidence'}
    off = {'clip': 1.0, 'evidence': {'weight': 0.5, 'enabled': False}}
    assert keys(off) == {'image', 'input_ids', 'attention_mask'}
    # the token-level term reads the quotes too, without the prototype term
    assert {'evidence_input_ids', 'evidence_attention_mask'} <= keys({'token_evidence': 1.0})
