"""A small OpenAI-compatible chat-completions server on 127.0.0.1 that can misbehave on purpose.

Real servers rarely produce a 429 with Retry-After, a 500, a hang or truncated JSON when a test
needs one; this one does, per request, from a script. It also serves the throughput benchmark
(fixed latency, many concurrent keep-alive connections) and dry runs without a model.

Example:
    >>> with FakeChatServer(latency=0.2) as server:
    ...     label_reports({'reports': 'r.csv', 'out_dir': 'o', 'backend': 'openai',
    ...                    'model': 'fake', 'base_url': server.url})
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from llm_labeling.responses import FIELD_NAMES
from llm_labeling.schema import FINDINGS

_REASONS = {200: 'OK', 400: 'Bad Request', 429: 'Too Many Requests', 500: 'Internal Server Error'}


@dataclass
class Reply:
    """What the server does with one request: a status and body, after `delay`, or hang forever."""

    status: int = 200
    body: dict | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False


def all_not_mentioned() -> dict:
    """A valid evidence answer: every finding not mentioned."""
    return {name: {'status': 'not_mentioned'} for name in FIELD_NAMES.values()}


def completion(request: dict, arguments: str | None = None, content: str | None = None) -> dict:
    """A chat.completion body: a tool call carrying `arguments`, or a message with `content`."""
    message: dict = {'role': 'assistant', 'content': content}
    finish = 'stop'
    if arguments is not None:
        tools = request.get('tools') or [{'function': {'name': 'ReportFindings'}}]
        name = tools[0]['function']['name']
        message['tool_calls'] = [
            {
                'id': 'call_0',
                'type': 'function',
                'function': {'name': name, 'arguments': arguments},
            }
        ]
        finish = 'tool_calls'
    return {
        'id': 'chatcmpl-fake',
        'object': 'chat.completion',
        'created': int(time.time()),
        'model': request.get('model', 'fake'),
        'choices': [{'index': 0, 'message': message, 'finish_reason': finish}],
        'usage': {'prompt_tokens': 100, 'completion_tokens': 50, 'total_tokens': 150},
    }


def valid_reply(request: dict, number: int) -> Reply:
    """The default script: a correct answer in whichever form was asked for."""
    if request.get('tools'):
        return Reply(body=completion(request, arguments=json.dumps(all_not_mentioned())))
    if request.get('response_format'):
        return Reply(body=completion(request, content=json.dumps(all_not_mentioned())))
    return Reply(body=completion(request, content=','.join(['0'] * len(FINDINGS))))


Responder = Callable[[dict, int], Reply]


class FakeChatServer:
    """Serves POST .../chat/completions; `responder(request_json, n)` decides each reply."""

    def __init__(self, responder: Responder | None = None, latency: float = 0.0):
        self.responder = responder or valid_reply
        self.latency = latency
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self._counter = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}/v1'

    def start(self) -> FakeChatServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, '127.0.0.1', 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _read_request(self, reader: asyncio.StreamReader) -> dict | None:
        line = await reader.readline()
        if not line:
            return None
        headers = {}
        while True:
            header = await reader.readline()
            if header in (b'\r\n', b'\n', b''):
                break
            key, _, value = header.decode('latin-1').partition(':')
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get('content-length', 0))
        body = await reader.readexactly(length) if length else b''
        self.headers.append(headers)
        return json.loads(body) if body else {}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                self.arrivals.append(time.monotonic())
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    reply = self.responder(request, next(self._counter))
                    if reply.hang:
                        await asyncio.sleep(3600)
                    if reply.delay or self.latency:
                        await asyncio.sleep(reply.delay or self.latency)
                finally:
                    self.in_flight -= 1
                writer.write(self._encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _encode(reply: Reply) -> bytes:
        body = reply.body
        payload = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        head = [
            f'HTTP/1.1 {reply.status} {_REASONS.get(reply.status, "Status")}',
            'Content-Type: application/json',
            f'Content-Length: {len(payload)}',
            *(f'{k}: {v}' for k, v in reply.headers.items()),
        ]
        return ('\r\n'.join(head) + '\r\n\r\n').encode() + payload
