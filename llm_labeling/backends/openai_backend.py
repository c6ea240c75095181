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
# Local servers ignore the key, but the client insists on one.
NO_KEY = 'not-needed'


class OpenAIBackend(LLMBackend):
    kind = 'openai'

    def __init__(self, settings: dict):
        model = settings.get('model')
        if not model:
            raise ValueError('The openai backend needs a model name (--model or model=...)')
        super().__init__(model, settings['prompt'], settings.get('mode') or 'tools', settings)
        key_env = settings['api_key_env']
        api_key = os.environ.get(key_env) if key_env else None
        base_url = settings.get('base_url')
        if not api_key and not base_url:
            raise ValueError(
                f'The openai backend needs ${key_env} set, or --base-url for a local server'
            )
        self.base_url = base_url
        self._timeout = float(settings['timeout'])
        concurrency = int(settings['concurrency'])
        self._raw, self._client = self._make_client(api_key or NO_KEY, concurrency)
        _logger.info('openai backend: model %s at %s', model, base_url or 'api.openai.com')

    def _make_client(self, api_key: str, connections: int):
        import httpx2
        import instructor
        import openai

        # The SDK's aiohttp transport: httpx's own pool spent more CPU per request than the rest
        # of the client (its pool work grows with the square of the connections), which capped a
        # 2-core machine below 90% of the ideal rate at concurrency 32.
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        http = openai.DefaultAioHttpClient(limits=limits, timeout=self._timeout)
        # openai's own retries are off: ours honour Retry-After and count attempts per report.
        raw = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=0,
            timeout=self._timeout,
            http_client=http,
        )
        return raw, instructor.from_openai(raw, mode=instructor_mode(self.mode_name))

    async def structured(self, messages: list[dict], response_model: type[BaseModel]) -> BaseModel:
        extra = {}
        if self.mode_name == 'json_grammar':
            schema = response_model.model_json_schema()
            extra['extra_body'] = {'response_format': {'type': 'json_object', 'schema': schema}}
        found, _ = await self._client.chat.completions.create_with_completion(
            model=self.model,
            messages=messages,
            response_model=response_model,
            max_retries=self.max_reasks,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            **extra,
        )
        return found

    async def text(self, messages: list[dict]) -> tuple[str, Usage]:
        completion = await self._raw.chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        return completion.choices[0].message.content or '', completion_usage(completion)

    async def aclose(self) -> None:
        await self._raw.close()

    def describe(self) -> dict:
        return {**super().describe(), 'base_url': self.base_url}
