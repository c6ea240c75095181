"""The deterministic rules labeler (llm_labeling.rules) behind the same interface as an LLM."""

from __future__ import annotations

from llm_labeling.backends.base import Answer, Backend


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
        return Answer(self._labeler.annotate('', text))
