"""`ctclip demo --ablation`: the seed papers' claims as arms of configs, each over several seeds.

Every arm is the demo's own configs plus overrides, so an ablation is data, not a code fork:
- Li et al. 2025: supervised stage 1 then CLIP, against CLIP from scratch for the same number of
  steps in total.
- LGDEA: evidence-aligned training with 10% of the pairs plus the rest unpaired, against vanilla
  CLIP on the same 10% of pairs, and against CLIP on all pairs.
- Each term of the evidence-aligned objective switched off in turn.
Each run is scored by `ctclip bench ct-rate` (zero-shot macro AUROC on held-out patients).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctclip.app.demo import Demo, _cli
from ctclip.app.pipeline import Pipeline, Stage, write_json_atomic
from ctclip.config import configs_dir, load_config

_logger = logging.getLogger(__name__)

# Epochs of the ablation runs: shorter than the demo's (30 + 4) so 3 seeds of 12 arms fit in an
# hour on 2 cores.
STAGE1_EPOCHS = 4
STAGE2_EPOCHS = 2
LIMITED = 'data.paired_fraction=0.1'
EVIDENCE_TERMS = ('bce', 'clip', 'multi_positive', 'evidence', 'text_bce', 'prompt')


@dataclass(frozen=True)
class Arm:
    """One trained configuration: an optional stage-1 init, then a stage-2 config plus overrides."""

    name: str
    group: str
    stage2: str
    overrides: tuple[str, ...] = ()
    stage1: str | None = None  # key of the stage-1 run it starts from, or None (from scratch)
    epochs: int = STAGE2_EPOCHS
    note: str = ''

    @property
    def training(self) -> tuple:
        """What decides the trained model: two arms that agree on it are one run, scored once."""
        return self.stage2, self.overrides, self.stage1, self.epochs


@dataclass
class Plan:
    stage1: dict[str, tuple[str, ...]] = field(default_factory=dict)
    arms: list[Arm] = field(default_factory=list)


def ablation_plan() -> Plan:
    plan = Plan()
    plan.stage1 = {'full': (), 'limited': (LIMITED,)}
    evidence = 'train/stage2-evidence-small.yaml'
    clip = 'train/stage2-clip-small.yaml'
    plan.arms = [
        Arm(
            'supervised+clip',
            'Li et al.',
            clip,
            stage1='full',
            note='stage 1 on silver labels, then CLIP (all pairs)',
        ),
        Arm(
            'clip-from-scratch',
            'Li et al.',
            clip,
            epochs=STAGE1_EPOCHS + STAGE2_EPOCHS,
            note='CLIP only, as many epochs as both stages together',
        ),
        Arm(
            'evidence-10%-pairs',
            'LGDEA',
            evidence,
            (LIMITED,),
            stage1='limited',
            note='10% pairs + unpaired images (pseudo-labels) and reports',
        ),
        Arm(
            'clip-10%-pairs',
            'LGDEA',
            clip,
            (LIMITED,),
            stage1='limited',
            note='vanilla CLIP on the same 10% of pairs',
        ),
        Arm(
            'clip-100%-pairs',
            'LGDEA',
            clip,
            stage1='full',
            note='CLIP on all pairs: the supervised+clip run, trained once',
        ),
    ]
    for term in EVIDENCE_TERMS:
        plan.arms.append(
            Arm(
                f'evidence-10% without {term}',
                'loss terms',
                evidence,
                (LIMITED, f'loss.{term}.enabled=false'),
                stage1='limited',
            )
        )
    plan.arms.append(
        Arm(
            'evidence-10% without pseudo-labels',
            'loss terms',
            evidence,
            (LIMITED, 'train.pseudo_labels=false'),
            stage1='limited',
        )
    )
    return plan


class Ablation:
    def __init__(self, cfg: dict, seeds: int):
        if seeds < 1:
            raise ValueError(f'seeds must be a positive integer, not {seeds}')
        self.cfg = copy.deepcopy(cfg)
        self.cfg['layout'] = 'ct-rate'
        self.demo = Demo(self.cfg)
        self.out = self.demo.out / 'ablation'
        self.seeds = list(range(seeds))
        self.plan = ablation_plan()

    def _train(
        self, config: str, out: Path, seed: int, epochs: int, extra: tuple[str, ...]
    ) -> Path:
        labels = self.demo.paths['labels']
        _cli(
            [
                'train',
                '--config',
                str(configs_dir() / config),
                f'data.cache={self.demo.paths["ctrate_cache"]}',
                f'data.labels={labels / "labels.csv"}',
                f'data.reports={labels / "reports.csv"}',
                f'data.evidence={labels / "evidence.jsonl"}',
                f'train.output_dir={out}',
                f'train.seed={seed}',
                f'train.epochs={epochs}',
                'train.eval_every=0',
                *extra,
            ],
            f'ablation {out.name}',
        )
        return out / 'final'

    def _score(self, model: Path, out: Path) -> float:
        gold = self.demo.ctrate('multi_abnormality_labels', 'valid_predicted_labels.csv')
        _cli(
            [
                'bench',
                'ct-rate',
                '--model',
                str(model),
                '--data',
                str(self.demo.paths['ctrate_cache']),
                '--labels',
                str(gold),
                '--out',
                str(out),
                'bootstrap.n_draws=0',
                'plots=false',
            ],
            f'ablation bench {out.name}',
        )
        metrics = json.loads((out / 'metrics.json').read_text(encoding='utf-8'))
        return float(metrics['classification']['macro']['auroc']['value'])

    def run_seed(self, seed: int) -> dict[str, float]:
        """Train and score every arm for one seed (each run resumes or is skipped if finished)."""
        root = self.out / f'seed{seed}'
        inits: dict[str, Path] = {}
        for key, extra in self.plan.stage1.items():
            inits[key] = self._train(
                'train/stage1-small.yaml', root / f'stage1-{key}', seed, STAGE1_EPOCHS, extra
            )
        by_training: dict[tuple, float] = {}
        scores = {}
        for arm in self.plan.arms:
            if arm.training not in by_training:
                slug = arm.name.replace(' ', '_').replace('%', 'pct')
                extra = arm.overrides + (
                    (f'train.init_from={inits[arm.stage1]}',) if arm.stage1 else ()
                )
                model = self._train(arm.stage2, root / slug, seed, arm.epochs, extra)
                by_training[arm.training] = self._score(model, root / slug / 'bench')
            scores[arm.name] = by_training[arm.training]
        return scores

    def stages(self) -> list[Stage]:
        data = {
            'seed': self.cfg['seed'],
            'recipe': self.cfg['recipe'],
            'n': self.cfg['n'],
            'n_rad': self.cfg['n_rad'],
            'data': self.cfg['data'],
            'layout': 'ct-rate',
        }
        stages = [
            Stage('synth', 'synthetic cohort', self.demo.synth, data),
            Stage(
                'preprocess',
                'preprocess to HDF5',
                self.demo.preprocess,
                {**data, 'workers': self.cfg['workers']},
            ),
            Stage(
                'label', 'label reports', self.demo.label, {**data, 'labeler': self.cfg['labeler']}
            ),
        ]
        arms = [a.name for a in self.plan.arms]
        names = {'train/stage1-small.yaml', *(a.stage2 for a in self.plan.arms)}
        configs = {name: load_config(configs_dir() / name) for name in sorted(names)}
        for seed in self.seeds:
            stages.append(
                Stage(
                    f'ablation_seed{seed}',
                    f'ablation seed {seed}',
                    lambda s, seed=seed: self.run_seed(seed),
                    {
                        **data,
                        'arms': arms,
                        'epochs': [STAGE1_EPOCHS, STAGE2_EPOCHS],
                        'configs': configs,
                    },
                    (self.out / f'seed{seed}',),
                )
            )
        return stages


def summarise(plan: Plan, per_seed: list[dict[str, float]]) -> list[dict]:
    rows = []
    for arm in plan.arms:
        values = np.array([s[arm.name] for s in per_seed], dtype=float)
        rows.append(
            {
                'arm': arm.name,
                'group': arm.group,
                'note': arm.note,
                'mean': float(values.mean()),
                'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                'values': values.tolist(),
            }
        )
    return rows


def render_table(rows: list[dict], seeds: int) -> str:
    lines = [
        f'| group | arm | zero-shot macro AUROC (mean ± std, {seeds} seeds) | per seed |',
        '|---|---|---|---|',
    ]
    for r in rows:
        per = ', '.join(f'{v:.3f}' for v in r['values'])
        lines.append(f'| {r["group"]} | {r["arm"]} | {r["mean"]:.3f} ± {r["std"]:.3f} | {per} |')
    return '\n'.join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r['mean'] for r in rows], xerr=[r['std'] for r in rows], color='#4c72b0', alpha=0.8)
    for yi, r in zip(y, rows, strict=True):
        ax.scatter(r['values'], [yi] * len(r['values']), color='k', s=10, zorder=3)
    ax.set_yticks(y, [f'{r["group"]}: {r["arm"]}' for r in rows])
    ax.axvline(0.5, color='grey', ls=':', lw=1)
    lo = min(min(r['values']) for r in rows)
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.set_xlabel('zero-shot macro AUROC (held-out synthetic patients)')
    fig.tight_layout()
    tmp = path.with_name(f'.{path.stem}.tmp.png')
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run_ablation(cfg: dict, seeds: int = 3) -> dict:
    ablation = Ablation(cfg, seeds)
    results = Pipeline(ablation.demo.out, ablation.stages()).run()
    per_seed = [results[f'ablation_seed{s}'] for s in ablation.seeds]
    rows = summarise(ablation.plan, per_seed)
    ablation.out.mkdir(parents=True, exist_ok=True)
    table = render_table(rows, seeds)
    write_json_atomic(
        ablation.out / 'ablation.json',
        {'rows': rows, 'seeds': ablation.seeds, 'epochs': [STAGE1_EPOCHS, STAGE2_EPOCHS]},
    )
    (ablation.out / 'ablation.md').write_text(f'# Ablation\n\n{table}\n', encoding='utf-8')
    plot(rows, ablation.out / 'ablation.png')
    print(table)
    return {'table': str(ablation.out / 'ablation.md'), 'rows': rows}
