"""CT-RATE and RAD-ChestCT zero-shot and retrieval benchmarks under the published protocols.

Library entry points (imported lazily, so `import benchmarks` stays cheap):
`run_ctrate(cfg)`, `run_radchestct(cfg)`, `score_files(cfg)`, `retrieval_files(cfg)` (config
dicts, see `benchmarks.runner.DEFAULTS`), `score(scores, labels, ...)`,
`score_retrieval(image_emb, text_emb, labels, ...)` and `write_report(metrics, out_dir)`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'run_ctrate': 'benchmarks.runner',
    'run_radchestct': 'benchmarks.runner',
    'score_files': 'benchmarks.files',
    'retrieval_files': 'benchmarks.files',
    'score': 'benchmarks.scoring',
    'score_retrieval': 'benchmarks.scoring',
    'ScoringOptions': 'benchmarks.scoring',
    'RetrievalOptions': 'benchmarks.retrieval',
    'BootstrapConfig': 'benchmarks.bootstrap',
    'write_report': 'benchmarks.report',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
