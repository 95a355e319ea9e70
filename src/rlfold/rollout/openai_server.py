"""Any rlfold engine served as an OpenAI-compatible endpoint on loopback that records every token it produced.

An agent program written against the OpenAI API (``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models``) can then be trained: each call generates with the served engine, and the server keeps,
per session, exactly the prompt ids, completion ids and log-probs of every call (``CallRecord``), for the
training batch to be assembled from them with nothing re-tokenised (``rlfold.rollout.verifiers_engine``).

A session is named by the ``X-Session-ID`` header (what ``verifiers`` sends: the trace id), else by the
request's ``user`` field; a call without either is a session of its own. Within a session, a request whose
messages repeat the previous request's messages plus the assistant message the server answered, then add
messages (tool results, a user turn), continues after exactly the previous call's context and completion ids:
only the added messages are tokenised, on their own (``bridged``). Otherwise the messages are encoded afresh:
through the tokenizer's chat template when it has one, else their contents joined by ``separator``.

Sampling: the server's ``params`` (the trainer's rollout parameters) are what it samples with; a request's
``max_tokens`` / ``max_completion_tokens`` can only lower the limit, and its ``stop`` strings add to the
server's. The response carries vLLM's token extensions: ``prompt_token_ids`` and ``choices[].token_ids``,
and with ``logprobs: true`` each token's log-prob under the distribution sampled from
(``choices[].logprobs.content[].logprob``; the token written ``token_id:<id>`` when the request asks
``return_tokens_as_token_ids``). A request with an ``X-Rlfold-Seed`` header samples its k-th call of the
session with a seed derived from that value and k, so a row's sampling does not depend on the order in which
concurrent calls arrive (without it, from the server's seed and a call counter). Generation is serialised
(one engine call at a time). The server binds
127.0.0.1 only and runs in a daemon thread; ``close()`` (or leaving the ``with`` block) stops it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

from rlfold.core.errors import DataError
from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt
from rlfold.rollout.base import Engine, GenerationRequest
from rlfold.rollout.sampling import SamplingParams

logger = logging.getLogger(__name__)

SESSION_HEADER = "X-Session-ID"
SEED_HEADER = "X-Rlfold-Seed"  # an integer: the calls of this session sample from seeds derived from it
LOOPBACK = "127.0.0.1"


@dataclass
class CallRecord:
    """One model call as the engine made it: the exact context ids, the sampled ids and their log-probs.

    ``bridged``: the context is the session's previous context + completion + the ids of the added
    messages (so it extends the previous call's ids exactly).
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    sample_logprobs: list[float]
    policy_logprobs: list[float]
    entropy: list[float]
    finish_reason: str
    text: str
    bridged: bool = False


@dataclass
class _Session:
    messages: list[dict[str, Any]] = field(default_factory=list)  # the last request's messages (normalised)
    calls: list[CallRecord] = field(default_factory=list)


def _text_of(content: Any) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise DataError(f"openai server: message content must be a string or a list of parts, got {type(content).__name__}")


def _normalise(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise DataError("openai server: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DataError(f"openai server: messages[{i}] must be an object with a 'role'")
        msg: dict[str, Any] = {"role": m["role"], "content": _text_of(m.get("content"))}
        for key in ("name", "tool_call_id", "tool_calls"):
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    return out


class OpenAIServer:
    """Serves ``engine`` over HTTP on 127.0.0.1 (see the module docstring); records every call per session."""

    def __init__(self, engine: Engine, tokenizer: Any, *, params: SamplingParams | None = None, seed: int = 0,
                 model_name: str = "rlfold-policy", separator: str = "\n", port: int = 0) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.params = params or SamplingParams()
        self.seed, self.model_name, self.separator = seed, model_name, separator
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()      # the sessions
        self._engine_lock = threading.Lock()  # one engine call at a time
        self._count = 0
        self._closed = False
        self._httpd = ThreadingHTTPServer((LOOPBACK, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rlfold-openai-server", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://127.0.0.1:<port>/v1``)."""
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}/v1"

    def close(self) -> None:
        """Stop serving and release the port (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAIServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ records
    def take(self, session: str) -> list[CallRecord]:
        """The calls recorded for ``session``, in order (forgotten afterwards; [] for an unknown session)."""
        with self._lock:
            s = self._sessions.pop(session, None)
        return list(s.calls) if s is not None else []

    def sessions(self) -> list[str]:
        """The session ids with recorded calls."""
        with self._lock:
            return list(self._sessions)

    def clear(self) -> None:
        """Forget every session."""
        with self._lock:
            self._sessions.clear()

    # ---------------------------------------------------------------- encoding
    def _encode_fresh(self, messages: list[dict[str, Any]]) -> GenerationRequest:
        text = self.separator.join(m["content"] for m in messages)
        prompt = Prompt(text=text, answer="")
        if getattr(self.tokenizer, "chat_template", None):
            return GenerationRequest(prompt=prompt, messages=[{"role": m["role"], "content": m["content"]}
                                                              for m in messages])
        return GenerationRequest(prompt=prompt)

    def _tail_ids(self, head: list[dict[str, Any]], messages: list[dict[str, Any]]) -> list[int] | None:
        """The ids of ``messages[len(head):]`` after ``head`` (which ends with the assistant turn), or None."""
        tail = messages[len(head):]
        if getattr(self.tokenizer, "chat_template", None):
            plain = [{"role": m["role"], "content": m["content"]} for m in messages]
            full = self.tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
            before = self.tokenizer.apply_chat_template(plain[:len(head)], tokenize=False)
            if not full.startswith(before):
                return None
            text = full[len(before):]
        else:
            text = self.separator + self.separator.join(m["content"] for m in tail)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids or None

    def _request_for(self, session: _Session, messages: list[dict[str, Any]]) -> tuple[GenerationRequest, bool]:
        if session.calls:
            k = len(session.messages)
            last = session.calls[-1]
            if (len(messages) > k + 1 and messages[:k] == session.messages and messages[k]["role"] == "assistant"
                    and messages[k]["content"] == last.text):
                tail = self._tail_ids(messages[:k + 1], messages)
                if tail is not None:
                    context = last.prompt_ids + last.completion_ids + tail
                    return GenerationRequest(prompt=Prompt(text=messages[-1]["content"], answer=""),
                                             context_ids=context), True
        return self._encode_fresh(messages), False

    # -------------------------------------------------------------- generation
    def complete(self, body: dict[str, Any], session_id: str | None, chat: bool,
                 seed: int | None = None) -> dict[str, Any]:
        """Answer one ``chat/completions`` (``chat``) or ``completions`` request body; records the call.
        ``seed``: the session's seed (the ``X-Rlfold-Seed`` header), if any."""
        if body.get("n", 1) not in (1, None):
            raise DataError("openai server: only n=1 is served (one completion per call)")
        sid = session_id or str(body.get("user") or "") or uuid.uuid4().hex
        with self._lock:
            session = self._sessions.setdefault(sid, _Session())
            self._count += 1
            call_seed = (derive_seed(self.seed, "openai_call", self._count) if seed is None
                         else derive_seed(seed, "session_call", len(session.calls)))
        if chat:
            messages = _normalise(body.get("messages"))
            request, bridged = self._request_for(session, messages)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise DataError("openai server: 'prompt' must be a non-empty string")
            messages, bridged = [], False
            request = GenerationRequest(prompt=Prompt(text=prompt, answer=""))
        params = self._params_for(body)
        with self._engine_lock:
            batch = self.engine.generate([request], params, call_seed)
        n = int(batch.response_mask[0].sum())
        record = CallRecord(
            prompt_ids=batch.prompt_ids[0, batch.prompt_mask[0].bool()].tolist(),
            completion_ids=batch.response_ids[0, :n].tolist(),
            sample_logprobs=batch.sample_logprobs[0, :n].tolist(),
            policy_logprobs=batch.policy_logprobs[0, :n].tolist(),
            entropy=batch.entropy[0, :n].tolist() if batch.entropy is not None else [0.0] * n,
            finish_reason=batch.finish_reasons[0], text=batch.response_texts[0], bridged=bridged)
        with self._lock:
            session.calls.append(record)
            session.messages = messages
            self._sessions[sid] = session
        return self._response(body, record, chat)

    def _params_for(self, body: dict[str, Any]) -> SamplingParams:
        update: dict[str, Any] = {"n": 1}
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit >= 1:
            update["max_new_tokens"] = min(limit, self.params.max_new_tokens)
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(stop, list) and stop:
            update["stop_strings"] = [*self.params.stop_strings, *[s for s in stop if isinstance(s, str) and s]]
        return self.params.model_copy(update=update)

    def _response(self, body: dict[str, Any], rec: CallRecord, chat: bool) -> dict[str, Any]:
        finish = "length" if rec.finish_reason == "length" else "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "token_ids": rec.completion_ids}
        if chat:
            choice["message"] = {"role": "assistant", "content": rec.text}
        else:
            choice["text"] = rec.text
        if body.get("logprobs"):
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            content = []
            for tid, lp in zip(rec.completion_ids, rec.sample_logprobs):
                piece = self.tokenizer.decode([tid])
                content.append({"token": f"token_id:{tid}" if as_ids else piece, "logprob": lp,
                                "bytes": list(piece.encode("utf-8")), "top_logprobs": []})
            choice["logprobs"] = {"content": content} if chat else {
                "tokens": [c["token"] for c in content], "token_logprobs": [c["logprob"] for c in content]}
        return {
            "id": f"rlfold-{uuid.uuid4().hex[:16]}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": str(body.get("model") or self.model_name),
            "choices": [choice], "prompt_token_ids": rec.prompt_ids,
            "usage": {"prompt_tokens": len(rec.prompt_ids), "completion_tokens": len(rec.completion_ids),
                      "total_tokens": len(rec.prompt_ids) + len(rec.completion_ids)},
        }


def _handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            logger.debug("openai server: " + format, *args)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model",
                                                              "owned_by": "rlfold"}]})
            else:
                self._error(404, f"no route GET {self.path}")

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            route = self.path.split("?", 1)[0].rstrip("/")
            chat = route in ("/v1/chat/completions", "/chat/completions")
            if not chat and route not in ("/v1/completions", "/completions"):
                self._error(404, f"no route POST {self.path}")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise DataError("openai server: the request body must be a JSON object")
                seed = self.headers.get(SEED_HEADER)
                payload = server.complete(body, self.headers.get(SESSION_HEADER), chat,
                                          None if seed is None else int(seed))
            except (DataError, ValueError) as exc:
                self._error(400, str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the client gets a 500 naming the error; logged here
                logger.exception("openai server: generation failed")
                self._error(500, f"{type(exc).__name__}: {exc}")
                return
            if body.get("stream"):
                self._send_events(stream_events(payload, chat, body))
            else:
                self._send(200, payload)

        def _send_events(self, events: list[dict[str, Any]]) -> None:
            data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def stream_events(payload: dict[str, Any], chat: bool, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole completion as server-sent event chunks (``stream: true``): the content in one delta, then the
    finish reason (with vLLM's ``token_ids`` and ``prompt_token_ids``), then usage when ``stream_options`` asks."""
    choice = payload["choices"][0]
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {k: payload[k] for k in ("id", "created", "model")}
    first: dict[str, Any] = {"index": 0, "finish_reason": None}
    if chat:
        first["delta"] = dict(choice["message"])
    else:
        first["text"] = choice["text"]
    if "logprobs" in choice:
        first["logprobs"] = choice["logprobs"]
    last: dict[str, Any] = {"index": 0, "finish_reason": choice["finish_reason"], "token_ids": choice["token_ids"]}
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    events = [{**head, "object": kind, "choices": [first]},
              {**head, "object": kind, "choices": [last], "prompt_token_ids": payload["prompt_token_ids"]}]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append({**head, "object": kind, "choices": [], "usage": payload["usage"]})
    return events


def assemble_calls(calls: Sequence[CallRecord]) -> tuple[list[int], dict[str, list], int]:
    """One training row from a session's calls: ``(prompt ids, response columns, prefix breaks)``.

    The prompt is the first call's context; the response is completion 1, the ids between it and the
    next call's completion (loss mask 0), completion 2, ... Each later call must continue the previous
    context exactly (a bridged call); the row ends before the first that does not (counted as a break).
    Columns: ``ids``, ``loss`` (1 on sampled tokens), ``slp``, ``plp``, ``ent``.
    """
    cols: dict[str, list] = {"ids": [], "loss": [], "slp": [], "plp": [], "ent": []}
    if not calls:
        return [], cols, 0
    prompt = list(calls[0].prompt_ids)
    context = prompt + list(calls[0].completion_ids)
    breaks = 0
    for k, call in enumerate(calls):
        if k:
            if call.prompt_ids[:len(context)] != context:
                breaks = len(calls) - k
                break
            gap = call.prompt_ids[len(context):]
            cols["ids"] += gap
            cols["loss"] += [0] * len(gap)
            for key in ("slp", "plp", "ent"):
                cols[key] += [0.0] * len(gap)
            context = list(call.prompt_ids) + list(call.completion_ids)
        cols["ids"] += call.completion_ids
        cols["loss"] += [1] * len(call.completion_ids)
        cols["slp"] += call.sample_logprobs
        cols["plp"] += call.policy_logprobs
        cols["ent"] += call.entropy
    return prompt, cols, breaks


__all__ = ["CallRecord", "OpenAIServer", "SEED_HEADER", "SESSION_HEADER", "assemble_calls"]
