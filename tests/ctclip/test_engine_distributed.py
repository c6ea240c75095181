"""2-process DeepSpeed (torchrun, gloo) against 1 process with the same global batch.

One process with gradient accumulation 2 sees, per micro-batch, exactly the samples each of two
ranks sees, so BatchNorm statistics match too and the runs must agree to fp32 tolerance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from ctclip.training import train
from ctclip.training.run_log import read_metrics
from tests.ctclip.test_training import config, losses
from tests.ctclip.training_data import make_cohort

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(tmp_path):
    cohort = make_cohort(tmp_path / 'cohort', n_train=16, n_valid=4)
    cfg = config(
        cohort,
        tmp_path / 'one',
        data={'batch_size': 2},
        deepspeed={'config': 'zero1'},
        train={'steps': 4, 'grad_accum': 2, 'eval_every': 4},
    )
    train(cfg)
    cfg['train'].update(output_dir=str(tmp_path / 'two'), grad_accum=1)
    (tmp_path / 'two.yaml').write_text(yaml.safe_dump(cfg), encoding='utf-8')
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
    }
    env.update(DS_ACCELERATOR='cpu', OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nproc_per_node',
        '2',
        '--master_port',
        str(_free_port()),
        '-m',
        'ctclip',
        'train',
        '--config',
        str(tmp_path / 'two.yaml'),
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    np.testing.assert_allclose(
        losses(tmp_path / 'two'), losses(tmp_path / 'one'), rtol=1e-5, atol=1e-6
    )
    from safetensors.torch import load_file

    a = load_file(tmp_path / 'one' / 'final' / 'model.safetensors')
    b = load_file(tmp_path / 'two' / 'final' / 'model.safetensors')
    # BatchNorm running statistics are per rank (rank 0's are exported): compare parameters only.
    # The bias of a convolution followed by BatchNorm has a gradient of exactly zero in theory, so
    # it is pure rounding noise that Adam scales up to full-size steps: it cannot match either.
    for key in a:
        if 'running_' in key or 'num_batches_tracked' in key or key.endswith('downsample.0.bias'):
            continue
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4)
    evals = {
        d: [r for r in read_metrics(tmp_path / d / 'metrics.jsonl') if 'val/head_auroc' in r]
        for d in ('one', 'two')
    }
    assert [r['step'] for r in evals['one']] == [r['step'] for r in evals['two']]
    # 2 ranks evaluate with rank 0's BatchNorm statistics, which the export saves, so the last
    # evaluation equals one process evaluating the exported model (before, each rank embedded its
    # shard with its own statistics)
    alone = _evaluate_export(cfg, tmp_path / 'two' / 'final')
    for key in ('val/zero_shot_auroc', 'val/head_auroc'):
        assert evals['two'][-1][key] == pytest.approx(alone[key], abs=1e-6), key


def _evaluate_export(cfg: dict, final) -> dict[str, float]:
    from ctclip.data.builder import build_datasets
    from ctclip.data.text import model_tokenizer
    from ctclip.model import CTClip
    from ctclip.training.evaluation import evaluate

    model = CTClip.from_pretrained(final)
    data = {**cfg['data'], 'window': cfg['data'].get('window') or model.config.get('window')}
    _, val = build_datasets(data, model_tokenizer(model), int(cfg['train']['seed']))
    train_cfg = cfg['train']
    return evaluate(
        model, val, batch_size=int(train_cfg['eval_batch_size']),
        templates=train_cfg['zero_shot_templates'],
    )  # fmt: skip


_TAKEN_PORT = """
import os, socket, sys
import ctclip.distributed as d

taken = socket.socket()
taken.bind(('127.0.0.1', 0))
taken.listen()
busy = taken.getsockname()[1]
ports = iter([busy, d._free_port()])
d._free_port = lambda: next(ports)  # the first pick is taken before the bind, as another process can
rank, world, local = d.init_distributed()
print(rank, world, busy != int(os.environ['MASTER_PORT']))
"""


def test_a_lone_process_retries_when_its_port_is_taken_before_the_bind():
    """A lone run picks its own MASTER_PORT; another process may bind it first (EADDRINUSE)."""
    env = {k: v for k, v in os.environ.items() if k not in ('MASTER_PORT', 'RANK', 'WORLD_SIZE')}
    proc = subprocess.run(
        [sys.executable, '-c', _TAKEN_PORT],
        capture_output=True, text=True, encoding='utf-8', env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-3:] == ['0', '1', 'True'], proc.stdout
    assert 'was taken before the bind' in proc.stderr
