"""The GPU benchmark's configuration on a CPU, so it keeps working between the GPU runs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.perf import bench_gpu
from benchmarks.perf.bench_train import BareLoop, write_cohort


def test_gpu_benchmark_config_trains_and_counts_flops_on_a_cpu(tmp_path):
    from ctclip.training.trainer import Trainer

    paths = write_cohort(tmp_path, 4, (24, 48, 48), 'li2025')
    cfg = bench_gpu.stage2_config(paths, tmp_path / 'run', 2, 0, channels_last=True)
    assert cfg['data']['crop_zyx'] == bench_gpu.CROP  # the published crop, shrunk below for a CPU
    assert cfg['model']['overrides']['text_cfg']['width'] == 768  # CXR-BERT's shape
    cfg['data']['crop_zyx'] = [16, 32, 32]
    cfg['model']['overrides']['text_cfg']['layers'] = 1  # smaller towers: the path, not the size
    cfg['model']['overrides']['vision_cfg'] = {'block_inplanes': [8, 16, 32, 64]}
    cfg['deepspeed']['precision'] = 'fp32'  # CPU bf16 without AMX is ~20x slower; tested elsewhere
    trainer = Trainer(cfg)
    batch = next(trainer._loader())
    assert torch.isfinite(trainer._micro_step(batch, 0, 0)['loss'])
    bare = BareLoop(cfg, trainer.model.config['window'], channels_last=trainer.model.channels_last)
    flops = bench_gpu.step_flops(bare, batch)
    # one BERT-base layer over 2 x 256 tokens: 6 x 7.1M x 512 = 2.2e10 FLOPs (forward + backward)
    assert 2e10 < flops < 1e11


def test_gpu_benchmark_reports_nothing_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert bench_gpu.run(quick=True) == []
    assert 'no CUDA device' in capsys.readouterr().out


def test_peak_table_and_override(monkeypatch):
    assert bench_gpu.peak_tflops('NVIDIA H100 80GB HBM3') == 989.4
    assert bench_gpu.peak_tflops('Some Future GPU') is None
    monkeypatch.setenv('CTCLIP_PEAK_TFLOPS', '123')
    assert bench_gpu.peak_tflops('Some Future GPU') == 123.0


def test_gpu_scaling_script_builds_a_cohort_trains_variants_and_names_a_failed_one(tmp_path):
    """The accuracy-vs-compute script on a CPU: a tiny cohort, one real run and one broken one."""
    env = dict(os.environ, SCALING_DIR=str(tmp_path), WORKERS='1', PYTHON=sys.executable)
    script = Path(__file__).resolve().parents[2] / 'benchmarks' / 'perf' / 'gpu_scaling.sh'
    variants = [
        'tiny=train.epochs=null train.steps=2',
        'broken=train.epochs=null train.steps=2 optim.lr=not-a-number',
    ]
    # The caller's environment names a rendezvous port that is taken, as pytest's own does after
    # an in-process Trainer, or a launcher's would: each variant must still get a port of its own.
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        env.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(busy.getsockname()[1]), RANK='0')
        proc = subprocess.run(
            ['bash', str(script), '12', *variants],
            cwd=script.parents[2],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert re.search(r'tiny  head AUROC (0\.\d+|1\.000)  step 2', proc.stdout), proc.stdout
    assert proc.returncode != 0
    assert f'broken: no validation record; see {tmp_path}/n12/runs/broken.log' in proc.stderr
    assert (tmp_path / 'n12' / 'runs' / 'tiny' / 'final').is_dir()
