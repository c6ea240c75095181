"""The part of an LLM backend that does not depend on where the model runs.

Two prompt styles: 'evidence' asks instructor for a `ReportFindings` object (re-asking when a
quote is not in the report), 'li' asks for one plain line of 18 values and re-asks on a bad line.
Subclasses supply the two kinds of completion call.
"""

from __future__ import annotations

import functools
import logging
from abc import abstractmethod

from pydantic import BaseModel

from llm_labeling.backends.base import Answer, Backend, Usage
from llm_labeling.backends.retry import InvalidOutput, RetryPolicy, with_retries
from llm_labeling.prompts import PROMPT_VERSIONS, check_style, evidence_messages, li_messages
from llm_labeling.responses import (
    REPORT_TEXT,
    ReportFindings,
    one_line_annotation,
    parse_one_line,
    to_annotation,
)

# One INFO line per HTTP request, and instructor's ERROR per failed attempt, would drown the
# progress bar; the runner logs each failure once, with its reason.
logging.getLogger('httpx').setLevel(logging.WARNING)
logging.getLogger('instructor').setLevel(logging.CRITICAL)

# instructor modes by name; the default per backend is 'tools' (works with llama.cpp, vLLM, OpenAI).
# 'json_grammar' is instructor's JSON mode with the schema sent the way llama.cpp's server takes it
# (response_format {"type": "json_object", "schema": ...}), which it compiles into a grammar;
# instructor's own JSON_SCHEMA request gets HTTP 500 from that server.
MODES = ('tools', 'tools_strict', 'json_schema', 'json', 'md_json', 'json_grammar')


def instructor_mode(name: str):
    import instructor

    table = {
        'tools': instructor.Mode.TOOLS,
        'tools_strict': instructor.Mode.TOOLS_STRICT,
        'json_schema': instructor.Mode.JSON_SCHEMA,
        'json': instructor.Mode.JSON,
        'md_json': instructor.Mode.MD_JSON,
        'json_grammar': instructor.Mode.JSON,
    }
    if name not in table:
        raise ValueError(f'instructor mode must be one of {", ".join(MODES)}, not {name!r}')
    return table[name]


@functools.lru_cache(maxsize=1)
def _wrapped() -> type[BaseModel]:
    """ReportFindings wrapped for instructor once: unwrapped, it rebuilds the class and its JSON
    schema on every call (about 10 ms of CPU per request, which caps throughput)."""
    import instructor

    _memoize_async_validator_check()
    return instructor.openai_schema(ReportFindings)


def _memoize_async_validator_check() -> None:
    """instructor walks the response model's MRO about 7 times per request to refuse async
    validators (a third of our CPU per report). A class's verdict cannot change, so remember it."""
    try:
        from instructor.v2.core import patch as patch_module
        from instructor.v2.validation import async_validators
    except ImportError:  # another instructor layout: nothing to speed up
        return
    original = async_validators.reject_async_validators
    if getattr(original, 'memoized', False):
        return
    passed: set[type] = set()

    def reject_async_validators(model):
        if not isinstance(model, type):
            return original(model)
        if model not in passed:
            original(model)  # raises for a model with async validators
            passed.add(model)

    reject_async_validators.memoized = True
    async_validators.reject_async_validators = reject_async_validators
    patch_module.reject_async_validators = reject_async_validators


def completion_usage(obj: object) -> Usage:
    """Tokens of a parsed instructor object (all its attempts) or of a raw completion."""
    usage = Usage()
    total = getattr(obj, '_total_usage', None)
    if total is None:
        raw = getattr(obj, '_raw_response', obj)
        total = getattr(raw, 'usage', None)
    usage.add(total)
    return usage


class LLMBackend(Backend):
    """Shared prompt handling, re-asking and retrying; subclasses only make the calls."""

    def __init__(self, model: str, prompt: str, mode: str, settings: dict):
        self.model = model
        self.style = check_style(prompt)
        self.prompt_version = PROMPT_VERSIONS[self.style]
        self.mode_name = mode
        self.max_reasks = int(settings['max_reasks'])
        self.max_tokens = int(settings['max_tokens'])
        self.temperature = float(settings['temperature'])
        retry = settings['retry']
        self.policy = RetryPolicy(
            max_retries=int(retry['max_retries']),
            initial=float(retry['initial_delay']),
            maximum=float(retry['max_delay']),
        )

    @abstractmethod
    async def structured(self, messages: list[dict], response_model: type[BaseModel]) -> BaseModel:
        """One instructor call: a validated object, after up to `max_reasks` re-asks.

        The report text for the quote check is in `responses.REPORT_TEXT` (set by the caller).
        """

    @abstractmethod
    async def text(self, messages: list[dict]) -> tuple[str, Usage]:
        """One plain chat completion: (content, usage)."""

    async def label(self, text: str) -> Answer:
        attempt = self._evidence if self.style == 'evidence' else self._one_line
        (annotation, usage), spent, attempts = await with_retries(
            lambda: attempt(text), self.policy, what=f'{self.kind} request'
        )
        usage.add(spent)
        return Answer(annotation, usage, attempts)

    async def _evidence(self, text: str):
        token = REPORT_TEXT.set(text)
        try:
            found = await self.structured(evidence_messages(text), _wrapped())
        finally:
            REPORT_TEXT.reset(token)
        return to_annotation(found, report_id=''), completion_usage(found)

    async def _one_line(self, text: str):
        messages = li_messages(text)
        usage = Usage()
        for _ in range(self.max_reasks + 1):
            content, used = await self.text(messages)
            usage.add(used)
            try:
                return one_line_annotation(parse_one_line(content), report_id=''), usage
            except ValueError as e:
                error = e
                messages = messages + [
                    {'role': 'assistant', 'content': content or ''},
                    {'role': 'user', 'content': f'{e}. Answer again with only that one line.'},
                ]
        exc = InvalidOutput(str(error))
        exc.total_usage = usage  # counted by the retry loop
        raise exc

    def describe(self) -> dict:
        return {**super().describe(), 'prompt_style': self.style, 'instructor_mode': self.mode_name}
