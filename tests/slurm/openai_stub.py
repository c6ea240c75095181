"""A deterministic OpenAI-compatible server for the labeling job test, started by the job itself.

    python tests/slurm/openai_stub.py --host 127.0.0.1 --port P --latency 0.5 --log requests.log

It answers GET /v1/models and POST /v1/chat/completions with a valid answer for whichever form was
asked for (llm_labeling.fake_server.valid_reply), after `latency` seconds, and appends one line per
completion request to --log, so a test can count what a requeued job asked again.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llm_labeling.fake_server import valid_reply


class _Handler(BaseHTTPRequestHandler):
    server_version = 'ctclip-openai-stub/1'
    latency = 0.0
    log_path = ''
    lock = threading.Lock()
    count = 0

    def log_message(self, *args) -> None:  # quiet: the job log is for the job
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip('/').endswith('/models'):
            self._send(200, {'object': 'list', 'data': [{'id': 'stub', 'object': 'model'}]})
        else:
            self._send(404, {'error': {'message': f'no route {self.path}'}})

    def do_POST(self) -> None:
        length = int(self.headers.get('Content-Length', 0))
        request = json.loads(self.rfile.read(length) or b'{}')
        if not self.path.rstrip('/').endswith('/chat/completions'):
            self._send(404, {'error': {'message': f'no route {self.path}'}})
            return
        time.sleep(self.latency)
        with self.lock:
            number = _Handler.count
            _Handler.count += 1
            with open(self.log_path, 'a', encoding='utf-8') as log:
                text = request['messages'][-1]['content'] if request.get('messages') else ''
                log.write(json.dumps({'n': number, 'chars': len(str(text))}) + '\n')
        reply = valid_reply(request, number)
        self._send(reply.status, reply.body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--latency', type=float, default=0.0)
    parser.add_argument('--log', required=True)
    args = parser.parse_args()
    _Handler.latency, _Handler.log_path = args.latency, args.log
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    print(f'serving on http://{args.host}:{args.port}/v1', flush=True)
    server.serve_forever()


if __name__ == '__main__':
    main()
