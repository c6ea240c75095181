"""Any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp server, OpenAI) via instructor.

The API key is read from the environment variable named in the config and handed to the client
only; it is never logged, cached or written to metadata.
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel

from llm_labeling.backends.base import Usage
from llm_labeling.backends.llm import LLMBackend, completion_usage, instructor_mode

_logger = logging.getLogger(__name__)
# One INFO line per HTTP request, and instructor's ERROR per failed attempt, would drown the
# progress bar; our retry loop logs each failure once, with its reason.
logging.getLogger('httpx').setLevel(logging.WARNING)
logging.getLogger('instructor').setLevel(logging.CRITICAL)
# Local servers ignore the key, but the client insists on one.
NO_KEY = 'not-needed'


class OpenAIBackend(LLMBackend):
    kind = 'openai'

    def __init__(self, settings: dict):
        model = settings.get('model')
        if not model:
            raise ValueError('The openai backend needs a model name (--model or model=...)')
        super().__init__(model, settings['prompt'], settings.get('mode') or 'tools', settings)
        import httpx
        import instructor
        import openai

        key_env = settings['api_key_env']
        api_key = os.environ.get(key_env) if key_env else None
        base_url = settings.get('base_url')
        if not api_key and not base_url:
            raise ValueError(
                f'The openai backend needs ${key_env} set, or --base-url for a local server'
            )
        self.base_url = base_url
        concurrency = int(settings['concurrency'])
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        timeout = float(settings['timeout'])
        self._http = httpx.AsyncClient(limits=limits, timeout=timeout)
        # openai's own retries are off: ours honour Retry-After and count attempts per report.
        self._openai = openai.AsyncOpenAI(
            api_key=api_key or NO_KEY,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=self._http,
        )
        self._client = instructor.from_openai(self._openai, mode=instructor_mode(self.mode_name))
        _logger.info('openai backend: model %s at %s', model, base_url or 'api.openai.com')

    async def structured(self, messages: list[dict], response_model: type[BaseModel]) -> BaseModel:
        found, _ = await self._client.chat.completions.create_with_completion(
            model=self.model,
            messages=messages,
            response_model=response_model,
            max_retries=self.max_reasks,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        return found

    async def text(self, messages: list[dict]) -> tuple[str, Usage]:
        completion = await self._openai.chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        return completion.choices[0].message.content or '', completion_usage(completion)

    async def aclose(self) -> None:
        await self._openai.close()
        await self._http.aclose()

    def describe(self) -> dict:
        return {**super().describe(), 'base_url': self.base_url}
