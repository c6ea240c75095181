"""Any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp server, OpenAI) via instructor.

The API key is read from the environment variable named in the config and handed to the client
only; it is never logged, cached or written to metadata.
"""

from __future__ import annotations

import contextlib
import logging
import os

from pydantic import BaseModel

from llm_labeling.backends.base import Usage
from llm_labeling.backends.llm import LLMBackend, completion_usage, instructor_mode

_logger = logging.getLogger(__name__)
# Local servers ignore the key, but the client insists on one.
NO_KEY = 'not-needed'
POOL_SIZE = 8


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
        # httpcore's pool does O(connections**2) work per request, so 32 connections in one pool
        # cost more CPU than the rest of a request; several small pools keep it linear.
        sizes = [POOL_SIZE] * (concurrency // POOL_SIZE) + [concurrency % POOL_SIZE]
        self._pools = [self._make_client(api_key or NO_KEY, n) for n in sizes if n]
        self._busy = [0] * len(self._pools)
        _logger.info('openai backend: model %s at %s', model, base_url or 'api.openai.com')

    def _make_client(self, api_key: str, connections: int):
        import httpx
        import instructor
        import openai

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        http = httpx.AsyncClient(limits=limits, timeout=self._timeout)
        # openai's own retries are off: ours honour Retry-After and count attempts per report.
        raw = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=0,
            timeout=self._timeout,
            http_client=http,
        )
        return raw, instructor.from_openai(raw, mode=instructor_mode(self.mode_name)), http

    @contextlib.contextmanager
    def _pool(self):
        """The least busy client, so no request queues while another pool has a free connection."""
        index = min(range(len(self._pools)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            yield self._pools[index]
        finally:
            self._busy[index] -= 1

    async def structured(self, messages: list[dict], response_model: type[BaseModel]) -> BaseModel:
        extra = {}
        if self.mode_name == 'json_grammar':
            schema = response_model.model_json_schema()
            extra['extra_body'] = {'response_format': {'type': 'json_object', 'schema': schema}}
        with self._pool() as (_, client, _):
            found, _ = await client.chat.completions.create_with_completion(
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
        with self._pool() as (raw, _, _):
            completion = await raw.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
        return completion.choices[0].message.content or '', completion_usage(completion)

    async def aclose(self) -> None:
        for raw, _, http in self._pools:
            await raw.close()
            await http.aclose()

    def describe(self) -> dict:
        return {**super().describe(), 'base_url': self.base_url}
