"""The deterministic rules labeler (llm_labeling.rules) behind the same interface as an LLM."""

from __future__ import annotations

import logging

from llm_labeling.backends.base import Answer, Backend, LabelingFailed

_logger = logging.getLogger(__name__)


class RulesBackend(Backend):
    kind = 'rules'
    cacheable = False  # microseconds per report; a cache would only add disk writes

    def __init__(self, settings: dict | None = None):
        try:
            from llm_labeling.rules import RulesLabeler
        except ImportError as e:
            raise ValueError(f'The rules backend is not available: {e}') from e
        self._labeler = RulesLabeler()
        version = str(getattr(self._labeler, 'version', 'unversioned'))
        self.model = version if version.startswith('rules') else f'rules-{version}'
        self.prompt_version = 'none'

    async def label(self, text: str) -> Answer:
        try:
            return Answer(self._labeler.annotate('', text))
        except Exception as e:  # one odd report must not stop a 50k-report run
            _logger.exception('rules labeler failed on a report')
            raise LabelingFailed(f'rules labeler error: {type(e).__name__}: {e}') from e
