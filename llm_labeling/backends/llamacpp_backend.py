"""A local GGUF model run in-process by llama-cpp-python, through instructor's patched create.

The model is not thread-safe, so calls run one at a time in a worker thread; concurrency above 1
only queues. For parallel decoding, serve the model (`python -m llama_cpp.server`) and use the
openai backend.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pydantic import BaseModel

from llm_labeling.backends.base import Usage
from llm_labeling.backends.llm import LLMBackend, completion_usage, instructor_mode

_logger = logging.getLogger(__name__)


class LlamaCppBackend(LLMBackend):
    kind = 'llamacpp'

    def __init__(self, settings: dict):
        opts = settings['llamacpp']
        path = Path(opts.get('model_path') or settings.get('model') or '')
        if not path.is_file():
            raise ValueError(
                f'The llamacpp backend needs a GGUF file (llamacpp.model_path or --model), '
                f'not {str(path)!r}'
            )
        super().__init__(path.name, settings['prompt'], settings.get('mode') or 'tools', settings)
        if self.mode_name == 'json_grammar':
            raise ValueError(
                "mode 'json_grammar' is for llama.cpp's server; in-process use 'tools'"
            )
        try:
            import llama_cpp
        except ImportError as e:
            raise ValueError(
                'The llamacpp backend needs llama-cpp-python (pip install ctclip[llamacpp], or '
                f'`make llama` for a portable CPU build): {e}'
            ) from e
        import instructor

        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=int(opts['n_ctx']),
            n_threads=opts.get('n_threads'),
            chat_format=opts['chat_format'],
            seed=int(opts.get('seed', 0)),
            verbose=False,
        )
        self._create = instructor.patch(
            create=self._llm.create_chat_completion_openai_v1,
            mode=instructor_mode(self.mode_name),
        )
        self._lock = asyncio.Lock()
        _logger.info('llamacpp backend: %s (n_ctx %s)', path, opts['n_ctx'])

    async def _run(self, fn, **kwargs):
        async with self._lock:
            return await asyncio.to_thread(fn, **kwargs)

    async def structured(self, messages: list[dict], response_model: type[BaseModel]) -> BaseModel:
        return await self._run(
            self._create,
            messages=messages,
            response_model=response_model,
            max_retries=self.max_reasks,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )

    async def text(self, messages: list[dict]) -> tuple[str, Usage]:
        completion = await self._run(
            self._llm.create_chat_completion_openai_v1,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        return completion.choices[0].message.content or '', completion_usage(completion)

    async def aclose(self) -> None:
        self._llm.close()
