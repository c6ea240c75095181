"""`ctclip demo --ablation`: the seed papers' claims as arms of configs, each over several seeds.

Every arm is the demo's own configs plus overrides, so an ablation is data, not a code fork:
- Li et al. 2025: supervised stage 1 then CLIP, against CLIP from scratch for the same number of
  steps in total.
- LGDEA: evidence-aligned training with 10% of the pairs plus the rest unpaired, against vanilla
  CLIP on the same 10% of pairs, and against CLIP on all pairs.
- Each term of the evidence-aligned objective switched off in turn.
Each run is scored by `ctclip bench ct-rate` (zero-shot macro AUROC on the test split) and, on
the synthetic cohort, by `ctclip bench grounding` (pointing game and global Dice on their masks).
Each claim is then resolved by the paired difference of its two arms, with a 95% interval from a
bootstrap over test patients and seeds (`benchmarks.paired`): "reproduced" only when it excludes
0 in the claimed direction.
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
from ctclip.config import load_config
from ctcommon.atomic import write_text

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
    evidence = 'train/stage2-evidence-small'
    clip = 'train/stage2-clip-small'
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
        overrides = {**self.demo.train_overrides(out, seed), 'train.epochs': epochs}
        overrides['train.eval_every'] = 0
        _cli(f'ablation {out.name}', 'train', config=config, overrides=overrides, extra=extra)
        return out / 'final'

    def _score(self, model: Path, out: Path, grounding: bool = True) -> dict[str, float]:
        """Zero-shot macro AUROC and grounding (pointing game, global Dice) on held-out patients
        (the test split); the per-volume scores and per-finding hits stay for the claims."""
        gold, _ = self.demo.held_out_tables()
        data, quick = self.demo.paths['ctrate_cache'], {'bootstrap.n_draws': 0, 'plots': 'false'}
        stage = f'ablation bench {out.name}'
        _cli(
            stage, 'bench', 'ct-rate', model=model, data=data, labels=gold, out=out, overrides=quick
        )
        metrics = json.loads((out / 'metrics.json').read_text(encoding='utf-8'))
        scores = {'auroc': float(metrics['classification']['macro']['auroc']['value'])}
        if grounding and self.demo.wants_grounding:
            dataset, masks = self.demo.held_out_grounding()
            # no location prior: it is the same for every arm (the demo reports it), and scoring
            # it on every test finding took longer than the model's own maps (one arm, 2 shared
            # cores: 82 s without it, 203 s with it)
            _cli(
                f'ablation grounding {out.name}', 'bench', 'grounding', model=model, data=data,
                dataset=dataset, masks=masks, out=out / 'grounding', n_bootstrap=0,
            )  # fmt: skip
            grounding = json.loads((out / 'grounding' / 'metrics.json').read_text('utf-8'))
            for key in ('pointing_game', 'global_dice'):
                scores[key] = float(grounding['model']['metrics'][key]['value'])
        return scores

    def run_dirs(self, seed: int) -> dict[str, Path]:
        """Arm -> the folder of the run that trained it (arms of one training share it)."""
        first: dict[tuple, Path] = {}
        out = {}
        for arm in self.plan.arms:
            slug = arm.name.replace(' ', '_').replace('%', 'pct')
            out[arm.name] = first.setdefault(arm.training, self.out / f'seed{seed}' / slug)
        return out

    def run_seed(self, seed: int) -> dict[str, dict[str, float]]:
        """Train and score every arm for one seed (each run resumes or is skipped if finished)."""
        root = self.out / f'seed{seed}'
        dirs = self.run_dirs(seed)
        inits: dict[str, Path] = {}
        for key, extra in self.plan.stage1.items():
            inits[key] = self._train(
                'train/stage1-small', root / f'stage1-{key}', seed, STAGE1_EPOCHS, extra
            )
        by_training: dict[tuple, dict[str, float]] = {}
        scores = {}
        # Grounding an arm (about 80 s) costs more than training it (about 50 s): only the claims'
        # arms are grounded (the loss-term arms are compared on AUROC), so that 3 seeds fit in an
        # hour on 2 cores (estimated 55 min from one arm's stage timings on a shared machine).
        grounded = {a.training for a in self.plan.arms if a.name in GROUNDED_ARMS}
        for arm in self.plan.arms:
            if arm.training not in by_training:
                extra = arm.overrides + (
                    (f'train.init_from={inits[arm.stage1]}',) if arm.stage1 else ()
                )
                model = self._train(arm.stage2, dirs[arm.name], seed, arm.epochs, extra)
                by_training[arm.training] = self._score(
                    model, dirs[arm.name] / 'bench', grounding=arm.training in grounded
                )
            scores[arm.name] = by_training[arm.training]
        return scores

    def stages(self) -> list[Stage]:
        data = {
            'seed': self.cfg['seed'],
            'recipe': self.cfg['recipe'],
            'n': self.cfg['n'],
            'n_rad': self.cfg['n_rad'],
            'test_min_count': self.cfg['test_min_count'],
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
        names = {'train/stage1-small', *(a.stage2 for a in self.plan.arms)}
        configs = {name: load_config(name) for name in sorted(names)}
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


@dataclass(frozen=True)
class Claim:
    """A seed paper's claim: arm `a` beats arm `b` (higher is better for every metric)."""

    group: str
    claim: str
    a: str
    b: str


CLAIMS = (
    Claim(
        'Li et al.',
        'supervised pretraining on silver labels, then CLIP, beats CLIP from scratch '
        '(same epochs in total)',
        'supervised+clip',
        'clip-from-scratch',
    ),
    Claim(
        'LGDEA',
        'evidence-aligned training with 10% of the pairs beats vanilla CLIP on the same 10%',
        'evidence-10%-pairs',
        'clip-10%-pairs',
    ),
)


def resolve_claims(ablation: Ablation, n_draws: int = 1000, seed: int = 0) -> list[dict]:
    """Each claim's paired difference with a bootstrap over test patients and seeds."""
    from benchmarks.paired import compare_runs

    gold, _ = ablation.demo.held_out_tables()
    dirs = [ablation.run_dirs(s) for s in ablation.seeds]
    out = []
    for c in CLAIMS:
        result = compare_runs(
            [d[c.a] / 'bench' for d in dirs],
            [d[c.b] / 'bench' for d in dirs],
            gold,
            n_draws=n_draws,
            seed=seed,
        )
        out.append({'group': c.group, 'claim': c.claim, 'a': c.a, 'b': c.b, **result})
    return out


GROUNDED_ARMS = frozenset(name for c in CLAIMS for name in (c.a, c.b))
CLAIM_METRICS = {'auroc': 'zero-shot macro AUROC', 'pointing_game': 'grounding pointing game'}


def _signed_ci(r: dict) -> str | None:
    """`[-0.012, +0.034]`, or None without an interval (no bootstrap draws)."""
    return None if r['ci_low'] is None else f'[{r["ci_low"]:+.3f}, {r["ci_high"]:+.3f}]'


def render_claims(claims: list[dict]) -> str:
    """The claims table: each metric's paired difference (A - B), its interval and verdict."""
    lines = [
        '| claim | A | B | metric | A (mean over seeds) | B | A - B [95% CI] | verdict |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for c in claims:
        for key, title in CLAIM_METRICS.items():
            if key not in c:
                continue
            r = c[key]
            ci = f' {_signed_ci(r)}' if _signed_ci(r) else ''
            lines.append(
                f'| {c["group"]} | {c["a"]} | {c["b"]} | {title} | {r["a"]["mean"]:.3f} | '
                f'{r["b"]["mean"]:.3f} | {r["difference"]:+.3f}{ci} | {r["verdict"]} |'
            )
    return '\n'.join(lines)


def claim_sentences(claims: list[dict]) -> list[str]:
    """One README sentence per claim, saying which way it went and on what evidence."""
    out = []
    for c in claims:
        r = c['auroc']
        ci = _signed_ci(r) or 'no interval'
        text = (
            f'**{c["group"]}** ({c["claim"]}): **{r["verdict"]}**. `{c["a"]}` minus `{c["b"]}` '
            f'zero-shot macro AUROC is {r["difference"]:+.3f}, 95% CI {ci} (paired bootstrap over '
            f'{c["n_patients"]} test patients and {c["n_seeds"]} seeds'
        )
        if 'pointing_game' in c:
            g = c['pointing_game']
            text += (
                f'); grounding pointing game {g["difference"]:+.3f}, 95% CI '
                f'{_signed_ci(g) or "no interval"}: {g["verdict"]}.'
            )
        else:
            text += ').'
        out.append(text)
    return out


# metric key in each arm's scores -> the column it heads
METRICS = {
    'auroc': 'zero-shot macro AUROC',
    'pointing_game': 'grounding pointing game',
    'global_dice': 'grounding global Dice',
}


def summarise(plan: Plan, per_seed: list[dict[str, dict[str, float]]]) -> list[dict]:
    """Mean, std and per-seed values of every metric of every arm."""
    rows = []
    for arm in plan.arms:
        row: dict = {'arm': arm.name, 'group': arm.group, 'note': arm.note, 'metrics': {}}
        for key in METRICS:
            if not all(key in s[arm.name] for s in per_seed):
                continue
            values = np.array([s[arm.name][key] for s in per_seed], dtype=float)
            row['metrics'][key] = {
                'mean': float(values.mean()),
                'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                'values': values.tolist(),
            }
        rows.append(row)
    return rows


def render_table(rows: list[dict], seeds: int) -> str:
    keys = [k for k in METRICS if any(k in r['metrics'] for r in rows)]
    head = ' | '.join(f'{METRICS[k]} (mean ± std, {seeds} seeds)' for k in keys)
    lines = [f'| group | arm | {head} | AUROC per seed |', '|---|---|' + '---|' * (len(keys) + 1)]
    for r in rows:
        cells = ' | '.join(
            f'{r["metrics"][k]["mean"]:.3f} ± {r["metrics"][k]["std"]:.3f}'
            if k in r['metrics']
            else 'not scored'
            for k in keys
        )
        per = ', '.join(f'{v:.3f}' for v in r['metrics']['auroc']['values'])
        lines.append(f'| {r["group"]} | {r["arm"]} | {cells} | {per} |')
    return '\n'.join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per metric: each arm's mean ± std, with the seeds as dots."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from ctcommon.atomic import atomic_path

    keys = [k for k in METRICS if any(k in r['metrics'] for r in rows)]
    fig, axes = plt.subplots(
        1, len(keys), figsize=(5 * len(keys) + 3, 0.45 * len(rows) + 1.2), sharey=True
    )
    axes = np.atleast_1d(axes)
    y = np.arange(len(rows))[::-1]
    for ax, key in zip(axes, keys, strict=True):
        nan = {'mean': np.nan, 'std': 0.0, 'values': []}  # an arm not scored on this metric
        stats = [r['metrics'].get(key, nan) for r in rows]
        ax.barh(y, [m['mean'] for m in stats], xerr=[m['std'] for m in stats], alpha=0.8)
        for yi, m in zip(y, stats, strict=True):
            ax.scatter(m['values'], [yi] * len(m['values']), color='k', s=10, zorder=3)
        if key == 'auroc':
            ax.axvline(0.5, color='grey', ls=':', lw=1)
        ax.set_xlabel(f'{METRICS[key]} (held-out synthetic patients)')
    axes[0].set_yticks(y, [f'{r["group"]}: {r["arm"]}' for r in rows])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format='png')
    plt.close(fig)


def run_ablation(cfg: dict, seeds: int = 3) -> dict:
    ablation = Ablation(cfg, seeds)
    results = Pipeline(ablation.demo.out, ablation.stages()).run()
    per_seed = [results[f'ablation_seed{s}'] for s in ablation.seeds]
    rows = summarise(ablation.plan, per_seed)
    ablation.out.mkdir(parents=True, exist_ok=True)
    table = render_table(rows, seeds)
    claims = resolve_claims(ablation, n_draws=cfg['bench']['bootstrap'], seed=cfg['bench']['seed'])
    sentences = claim_sentences(claims)
    write_json_atomic(
        ablation.out / 'ablation.json',
        {
            'rows': rows,
            'claims': claims,
            'seeds': ablation.seeds,
            'epochs': [STAGE1_EPOCHS, STAGE2_EPOCHS],
            'held_out': ablation.demo.held_out,
        },
    )
    claims_md = render_claims(claims)
    sentences_md = '\n'.join(f'- {s}' for s in sentences)
    write_text(
        ablation.out / 'ablation.md',
        f'# Ablation\n\n{table}\n\n## The claims\n\n{claims_md}\n\n{sentences_md}\n',
    )
    plot(rows, ablation.out / 'ablation.png')
    print(f'{table}\n\n{claims_md}\n\n{sentences_md}')
    return {'table': str(ablation.out / 'ablation.md'), 'rows': rows, 'claims': claims}
