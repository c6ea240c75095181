"""Labeling backends: `rules` (offline default), `openai` (any compatible server), `llamacpp`."""

from __future__ import annotations

from llm_labeling.backends.base import (
    Answer,
    Backend,
    FatalBackendError,
    LabelingFailed,
    Usage,
)

BACKENDS = ('rules', 'openai', 'llamacpp')


def make_backend(settings: dict) -> Backend:
    """Build the backend named by settings['backend'] (modules import lazily: llama_cpp is heavy)."""
    kind = settings.get('backend')
    if kind == 'rules':
        from llm_labeling.backends.rules_backend import RulesBackend

        return RulesBackend(settings)
    if kind == 'openai':
        from llm_labeling.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    if kind == 'llamacpp':
        from llm_labeling.backends.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend(settings)
    raise ValueError(f'Backend must be one of {", ".join(BACKENDS)}, not {kind!r}')


__all__ = ['Answer', 'BACKENDS', 'Backend', 'FatalBackendError', 'LabelingFailed', 'Usage']
__all__ += ['make_backend']
