"""A loopback OpenAI-compatible chat server for tests (``POST /v1/chat/completions``).

It answers by a scripted sequence of behaviours, one per request, and counts requests::

    with FakeLLMServer(["ratelimit", "malformed", "good"]) as server:
        annotator = make_annotator("llm", base_url=server.base_url, model="fake", ...)
        ...
        assert server.calls == 3

Behaviours (strings or dicts):

- ``"good"``: HTTP 200 with a valid annotation JSON (``server.good_answer(request)``; override
  ``answer_fn`` to compute it from the request);
- ``"malformed"``: HTTP 200 whose message content is not JSON;
- ``"bad_schema"``: HTTP 200 with JSON that violates the schema (confidence 9, key missing);
- ``"slow"``: sleeps ``slow_s`` seconds before a good answer (the client should time out first);
- ``"ratelimit"``: HTTP 429 with ``Retry-After: <retry_after>`` seconds;
- ``"error500"`` / ``"error503"``: server errors; ``"error401"``: authentication failure;
- ``{"status": int, "body": dict, "headers": dict}``: anything else.

When the script runs out, ``default`` (``"good"``) is used. The server runs in a daemon thread
on 127.0.0.1 with an OS-chosen port (``port 0``); ``ThreadingHTTPServer`` so a slow answer
does not block the next request. It records request bodies (``server.requests``) and the
``Authorization`` headers seen (``server.auth_headers``) so tests can check what was sent.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

GOOD_ANSWER = {
    "prompt": "New small left pleural effusion.",
    "interpretation": "The left costophrenic angle, previously sharp, is now blunted, indicating a new small left pleural effusion.",
    "confidence": 5,
    "reason": "Both reports are complete and the change is stated explicitly.",
}


class FakeLLMServer:
    def __init__(
        self,
        script: Iterable[str | dict] = (),
        *,
        default: str | dict = "good",
        slow_s: float = 2.0,
        retry_after: float = 0.05,
        answer_fn: Callable[[dict], dict] | None = None,
    ) -> None:
        self.script = list(script)
        self.default = default
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.answer_fn = answer_fn
        self.calls = 0
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.behaviours: list[str] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "FakeLLMServer":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "request body is not JSON"}})
                    return
                behaviour = outer._next(body, self.headers.get("Authorization", ""))
                try:
                    outer._respond(self, behaviour, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with outer._lock:
                        outer._in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, str(value))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # ---------------------------------------------------------------- behaviour
    def good_answer(self, request: dict) -> dict:
        return dict(self.answer_fn(request) if self.answer_fn else GOOD_ANSWER)

    def _next(self, body: dict, auth: str) -> str | dict:
        with self._lock:
            self.calls += 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self.requests.append(body)
            self.auth_headers.append(auth)
            behaviour = self.script.pop(0) if self.script else self.default
            self.behaviours.append(behaviour if isinstance(behaviour, str) else "custom")
            return behaviour

    @staticmethod
    def _completion(body: dict, content: str) -> dict:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def _respond(self, handler, behaviour: str | dict, body: dict) -> None:
        if isinstance(behaviour, dict):
            handler._send(behaviour.get("status", 200), behaviour.get("body", {}), behaviour.get("headers"))
            return
        if behaviour == "good":
            handler._send(200, self._completion(body, json.dumps(self.good_answer(body))))
        elif behaviour == "slow":
            time.sleep(self.slow_s)
            handler._send(200, self._completion(body, json.dumps(self.good_answer(body))))
        elif behaviour == "malformed":
            handler._send(200, self._completion(body, '{"prompt": "New effusion", "interpretation": '))
        elif behaviour == "bad_schema":
            handler._send(200, self._completion(body, json.dumps({"prompt": "x", "confidence": 9})))
        elif behaviour == "ratelimit":
            handler._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": self.retry_after})
        elif behaviour.startswith("error"):
            status = int(behaviour[len("error"):])
            handler._send(status, {"error": {"message": f"fake error {status}"}})
        else:
            raise ValueError(f"unknown fake behaviour {behaviour!r}")
