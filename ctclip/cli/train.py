"""`ctclip train`: one training stage on DeepSpeed, resumable, from a YAML config."""

from __future__ import annotations

import argparse
import logging

HELP = 'train a model (stage 1 supervised, stage 2 CLIP / evidence-aligned) with DeepSpeed'
DESCRIPTION = """\
Train one stage with DeepSpeed (ZeRO 0-3, fp32 or bf16, CPU or GPU, 1 or N processes).

  ctclip train --config train/stage1-small data.cache=cache.h5 \\
      data.labels=labels.csv data.reports=reports.csv train.output_dir=runs/stage1
  ctclip train --config train/stage2-evidence-small ... \\
      data.evidence=evidence.jsonl train.init_from=runs/stage1/final train.output_dir=runs/stage2
  torchrun --nproc_per_node 2 -m ctclip train --config ...      # multi-process

--config takes a YAML file or a packaged name (`ctclip configs list train`; `ctclip configs export
DIR` writes editable copies).

Rerunning the same command resumes exactly from OUTPUT_DIR/checkpoints/latest. SIGTERM or SIGUSR1
saves a checkpoint after the current step and exits with status 0; the run is finished when
OUTPUT_DIR/final/ exists. Outputs: checkpoints/, final/ (exported model), metrics.jsonl,
tensorboard/, training_curves.png, resolved_config.yaml.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--output-dir', help='run folder (train.output_dir)')
    parser.add_argument('--init-from', help='exported model folder to start from (train.init_from)')
    parser.add_argument('--steps', type=int, help='optimizer steps (train.steps)')
    parser.add_argument(
        '--seed', type=int, help='seed of the data order, crops and init (train.seed)'
    )
    parser.add_argument('--no-resume', action='store_true', help='ignore checkpoints/latest')
    # The DeepSpeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument('--local_rank', '--local-rank', type=int, help=argparse.SUPPRESS)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from ctclip.config import resolve
    from ctclip.training import TRAIN_DEFAULTS, train, train_config
    from ctclip.training.trainer import Interrupted

    flags = {
        'train.output_dir': args.output_dir,
        'train.init_from': args.init_from,
        'train.steps': args.steps,
        'train.seed': args.seed,
        'train.resume': False if args.no_resume else None,
    }
    if not args.verbose:
        logging.getLogger('DeepSpeed').setLevel(logging.WARNING)
    # typed and validated before any work: a misspelt key fails here, before the process group
    cfg = train_config(resolve(TRAIN_DEFAULTS, args.config, flags, overrides))
    try:
        final = train(cfg)
    except Interrupted as stop:
        print(
            f'Checkpointed at step {stop.step} ({stop.reason}): {stop.checkpoint}. Rerun to resume.'
        )
        return 0
    finally:
        _leave_process_group()
    print(f'Model exported to {final}')
    return 0


def _leave_process_group() -> None:
    """A launched worker (torchrun, srun) exits next: close gloo/NCCL first. Left to interpreter
    exit, gloo's threads can be torn down while joinable, and the worker dies of SIGABRT after its
    model was exported (seen once on the local Slurm cluster). A lone process keeps its group: the
    demo runs the next stage in the same process."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.destroy_process_group()
