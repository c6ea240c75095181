"""Retries with exponential backoff that honour Retry-After, and the sorting of errors into kinds.

Rate limits (429), server errors (5xx), timeouts, dropped connections and invalid model output are
worth retrying; a bad API key or an unknown model is not, and stops the run. An answer cut off at
max_tokens is not retried either: the same request is cut off again (and at temperature 0 it is the
same answer), so the report fails at once with a reason that names the setting.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from pydantic import ValidationError

from llm_labeling.backends.base import FatalBackendError, LabelingFailed, Usage

_logger = logging.getLogger(__name__)
T = TypeVar('T')
FATAL_STATUS = (401, 403, 404)


class InvalidOutput(ValueError):
    """The model answered, but not in the required form (after instructor's re-asks)."""


@dataclass(frozen=True)
class RetryPolicy:
    """max_retries extra attempts; delay = initial * multiplier**n, capped, or the server's Retry-After."""

    max_retries: int = 4
    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f'max_retries must be >= 0, not {self.max_retries}')
        if self.initial < 0 or self.maximum < 0:
            raise ValueError(f'Backoff delays must be >= 0, not {self.initial}, {self.maximum}')

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.maximum)
        base = min(self.initial * self.multiplier**retry_number, self.maximum)
        return base * (1 + self.jitter * random.random())


def parse_retry_after(headers: object) -> float | None:
    """Seconds from a `Retry-After` (seconds or HTTP date) or `retry-after-ms` header."""
    if headers is None:
        return None
    get = getattr(headers, 'get', None)
    if get is None:
        return None
    ms = get('retry-after-ms')
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = get('retry-after')
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def cut_off_at(exc: BaseException) -> str | None:
    """The token limit the model's last answer ran into ('max_tokens=N'), or None if it stopped
    by itself.

    Servers disagree on how they say so: OpenAI and vLLM set finish_reason 'length'; llama.cpp's
    server says 'tool_calls' for a cut-off tool call, so its token count is compared to the limit.
    """
    for e in _chain(exc):
        completion = getattr(e, 'last_completion', None)
        if completion is None:
            continue
        limit = (getattr(e, 'create_kwargs', None) or {}).get('max_tokens')
        choices = getattr(completion, 'choices', None) or []
        tokens = getattr(getattr(completion, 'usage', None), 'completion_tokens', None)
        if choices and getattr(choices[0], 'finish_reason', None) == 'length':
            known = limit if limit is not None else tokens
            return f'max_tokens={known}' if known is not None else 'the token limit'
        if limit is not None and tokens is not None and tokens >= limit:
            return f'max_tokens={limit}'
    return None


def _connection_fault(exc: BaseException) -> str | None:
    """'refused' or 'reset' when the socket error under a client error says so.

    The SDK's aiohttp transport wraps a refused connection in a ConnectTimeout, so without this a
    server that is not running reads as a slow one.
    """
    for e in _chain(exc):
        if isinstance(e, ConnectionRefusedError) or getattr(e, 'errno', None) == errno.ECONNREFUSED:
            return f'refused: connection refused ({e.strerror or e}); is the server running?'
        if isinstance(e, ConnectionResetError):
            return f'connection reset by the server ({e.strerror or e})'
    return None


def classify(exc: BaseException) -> tuple[bool, str, float | None]:
    """(retryable, reason, retry_after seconds) for an exception raised by one attempt.

    Reasons start with what happened: `refused`, `timeout`, `HTTP <status>`, `invalid output`,
    `connection ...`, or the exception's type.
    """
    import openai

    cut = cut_off_at(exc)
    if cut is not None:  # the same request would be cut off again: fail now, say what to change
        return False, f'output cut off at {cut}: raise max_tokens', None
    fault = _connection_fault(exc)
    if fault is not None:
        return True, fault, None
    for e in _chain(exc):
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            reason = f'HTTP {status}: {str(e.message)[:200]}'
            if status in FATAL_STATUS:
                raise FatalBackendError(f'The server refused the request ({reason})') from exc
            retryable = status in (408, 409, 429) or status >= 500
            return retryable, reason, parse_retry_after(e.response.headers)
        if isinstance(e, openai.APITimeoutError):
            return True, 'timeout: no answer within the request timeout', None
        if isinstance(e, openai.APIConnectionError):
            return True, f'connection error: {e}', None
        if isinstance(e, (ValidationError, json.JSONDecodeError, InvalidOutput)):
            return True, f'invalid output: {str(e)[:300]}', None
    name = type(exc).__name__
    if 'Incomplete' in name or 'Retry' in name or 'Parsing' in name:
        return True, f'invalid output: {str(exc)[:300]}', None
    return False, f'{name}: {str(exc)[:300]}', None


def exception_usage(exc: BaseException) -> Usage:
    usage = Usage()
    for e in _chain(exc):
        total = getattr(e, 'total_usage', None)
        if total is not None:
            usage.add(total)
            break
    return usage


async def with_retries(
    attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str = 'request'
) -> tuple[T, Usage, int]:
    """Run `attempt` until it succeeds; returns (result, usage of failed attempts, attempts)."""
    spent = Usage()
    for number in range(policy.max_retries + 1):
        try:
            return await attempt(), spent, number + 1
        except (FatalBackendError, asyncio.CancelledError):
            raise
        except Exception as exc:  # sorted below; unknown errors are not retried
            spent.add(exception_usage(exc))
            retryable, reason, retry_after = classify(exc)
            reason = ' '.join(reason.split())  # one line in failures.csv and in the log
            if not retryable or number == policy.max_retries:
                raise LabelingFailed(reason, spent, number + 1) from exc
            wait = policy.delay(number, retry_after)
            _logger.debug('%s failed (%s); retry %d in %.2f s', what, reason, number + 1, wait)
            await asyncio.sleep(wait)
    raise AssertionError('unreachable')
