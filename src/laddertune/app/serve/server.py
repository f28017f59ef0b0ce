"""The HTTP face of a `TaskPool`: FastAPI routes in OpenAI's shapes, run by uvicorn.

Every bad request gets a JSON error, ``{"error": {"message", "type", "code"}}``, with its 4xx
status, and the server goes on serving: 400 for malformed JSON, a wrong field type, empty input
or a text longer than --max-length (refused, not truncated: a cut text would be answered as
another text); 404 for an unknown task; 409 for a task that cannot join this backbone; 413 for
a body over --max-body-bytes; 429 when --max-queue requests wait already; 503 when an answer
takes longer than --timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ...errors import LSTError
from .batching import Batcher
from .pool import PoolError, TaskPool


@dataclass(frozen=True)
class Limits:
    """What one server accepts; the flags of `laddertune serve` (options.ServeConfig)."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout: float = 30.0
    max_new_tokens_limit: int = 256
    max_length: int = 512
    max_body_bytes: int = 1_000_000


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error",
                413: "request_too_large", 429: "rate_limit_error", 503: "timeout_error"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": status,
                                   "type": _ERROR_TYPES.get(status, "error")}}, status)


class ServerState:
    """The pool, its batchers (classification, completions), the streaming thread, and how
    many requests are in."""

    def __init__(self, pool: TaskPool, limits: Limits):
        self.pool, self.limits = pool, limits
        self.batcher = Batcher(lambda rows: pool.classify(rows, limits.max_batch_size),
                               limits.max_batch_size, limits.max_wait_ms)
        self.completions = Batcher(pool.generate_batch, limits.max_batch_size,
                                   limits.max_wait_ms)
        self.generation = ThreadPoolExecutor(1, thread_name_prefix="laddertune-stream")
        self.pending = 0

    def check_room(self) -> None:
        """429 when --max-queue requests are in already."""
        if self.pending >= self.limits.max_queue:
            raise ApiError(429, f"{self.pending} requests are waiting (--max-queue "
                                f"{self.limits.max_queue}); retry after a moment")

    @contextlib.contextmanager
    def admitted(self):
        """A place in the queue, or 429 (`check_room`)."""
        self.check_room()
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def within_timeout(self, awaitable):
        try:
            return await asyncio.wait_for(awaitable, self.limits.timeout)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no answer within --timeout {self.limits.timeout:g} s; the "
                                "server is busy: retry, or send fewer texts at once") from None


def create_app(pool: TaskPool, limits: Limits) -> FastAPI:
    state = ServerState(pool, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batching = [asyncio.create_task(b.run()) for b in (state.batcher, state.completions)]
        yield
        for task in batching:
            task.cancel()
        state.batcher.close()
        state.completions.close()
        state.generation.shutdown(wait=True)

    app = FastAPI(title="laddertune serve", lifespan=lifespan)
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return _error(err.status, err.message)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        return _error(err.status_code, str(err.detail))

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_body_bytes:
            return _error(413, f"the body is {length} bytes, over --max-body-bytes "
                               f"{limits.max_body_bytes}; send fewer or shorter texts")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "tasks": len(pool.tasks), "backbone_passes": pool.backbone_passes,
                "batches": state.batcher.batches,
                "completion_batches": state.completions.batches, "waiting": state.pending}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [t.describe() for t in pool.tasks.values()]}

    @app.post("/v1/models", status_code=201)
    async def load_model(request: Request):
        body = await _json_body(request, limits)
        name = _field(body, "name", str)
        checkpoint = _field(body, "checkpoint", str)
        loop = asyncio.get_running_loop()
        try:
            served = await loop.run_in_executor(None, pool.load, name, checkpoint)
        except PoolError as err:
            raise ApiError(err.status, str(err)) from None
        except LSTError as err:
            raise ApiError(400, str(err)) from None
        return served.describe()

    @app.delete("/v1/models/{name}")
    async def unload_model(name: str):
        try:
            pool.unload(name)
        except PoolError as err:
            raise ApiError(err.status, str(err)) from None
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await _json_body(request, limits)
        names = _names(body)
        for name in names:
            if _task(pool, name).kind != "classify":
                raise ApiError(400, f"{name!r} is a generate task; ask it at /v1/completions")
        texts = _texts(body)
        ids = pool.tokenizer(texts)["input_ids"]
        for i, row in enumerate(ids):
            if len(row) > limits.max_length:
                raise ApiError(400, f"input[{i}] is {len(row)} tokens, over --max-length "
                                    f"{limits.max_length}; shorten it (texts are refused, not "
                                    "cut)")
        with state.admitted():
            answers = await state.within_timeout(
                state.batcher.submit([(row, names) for row in ids]))
        data = []
        for i, answer in enumerate(answers):
            for name in names:
                labels = pool.tasks[name].labels if name in pool.tasks else []
                probs = answer[name]
                best = max(range(len(probs)), key=probs.__getitem__)
                data.append({"object": "classification", "index": i, "model": name,
                             "label": labels[best] if labels else best,
                             "probs": dict(zip(labels, probs))})
        return {"object": "list", "model": body["model"], "data": data,
                "usage": {"prompt_tokens": sum(map(len, ids)),
                          "total_tokens": sum(map(len, ids))}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request, limits)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "'prompt' must be a non-empty string")
        return await _answer(state, body, prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request, limits)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} "
                                "objects")
        users = [m["content"] for m in messages if m.get("role") == "user"]
        if not users or not users[-1].strip():
            raise ApiError(400, "'messages' holds no user message with content to answer")
        return await _answer(state, body, users[-1], chat=True)

    return app


# ---- generation -------------------------------------------------------------------------------

async def _answer(state: ServerState, body: dict, prompt: str, chat: bool):
    pool, limits = state.pool, state.limits
    name = _field(body, "model", str)
    served = _task(pool, name)
    if served.kind != "generate":
        raise ApiError(400, f"{name!r} is a classify task; ask it at /v1/classify")
    if chat and not served.chat:
        raise ApiError(400, f"{name!r} was trained without --chat-template; ask it at "
                            "/v1/completions")
    settings, warning = _generation_settings(body, served, limits)
    room = settings["max_new_tokens"] if served.task.task_type == "CAUSAL_LM" else 0
    budget = min(served.max_length, limits.max_length) - room
    ids, cut = served.task.format.prompt(prompt, budget)
    if cut:
        raise ApiError(400, f"the prompt does not fit in {budget} tokens (the run's "
                            f"--max-length {served.max_length} less max_tokens {room}); shorten "
                            "it or ask for fewer tokens")
    kind = "chat.completion" if chat else "text_completion"
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind,
            "created": int(time.time()), "model": name}
    usage = {"prompt_tokens": len(ids)}
    if not _field(body, "stream", bool, required=False, default=False):
        with state.admitted():
            [(text, tokens)] = await state.within_timeout(
                state.completions.submit([(name, ids, settings)]))
        choice = ({"message": {"role": "assistant", "content": text}} if chat
                  else {"text": text})
        answer = {**head, "choices": [{"index": 0, **choice, "finish_reason": _finish(
            served, tokens, settings)}], "usage": {**usage, "completion_tokens": len(tokens)}}
        return {**answer, "warning": warning} if warning else answer
    state.check_room()               # before the stream begins: a 429 cannot come later
    return StreamingResponse(_stream(state, name, ids, settings, head, chat),
                             media_type="text/event-stream")


async def _stream(state: ServerState, name: str, ids, settings, head: dict, chat: bool):
    """Server-sent events: a chunk per piece of text as tokens come, a last chunk with the
    finish reason, then ``data: [DONE]``."""
    from ..cli import TextStream
    pool = state.pool
    served = pool.get(name)
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    class Writer:
        def write(self, text):
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        def flush(self):
            pass

    stream = TextStream(served.task.decode, Writer())
    kind = head["object"] + (".chunk" if head["object"] == "chat.completion" else "")

    def chunk(text: str | None, finish: str | None) -> str:
        delta = ({"delta": {"content": text} if text else {}} if kind.startswith("chat")
                 else {"text": text or ""})
        body = {**head, "object": kind, "choices": [{"index": 0, **delta,
                                                     "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    with state.admitted():
        work = loop.run_in_executor(state.generation, pool.generate, name, ids, settings, stream)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
        while (piece := await _next_piece(pieces, state.limits.timeout)) is not None:
            if piece is TimeoutError:
                yield _error_event(f"no token within --timeout {state.limits.timeout:g} s", 503)
                return
            yield chunk(piece, None)
        try:
            text, tokens = work.result()
        except Exception as err:  # noqa: BLE001 - the stream has begun: report it in-band
            yield _error_event(str(err), 500)
            return
    if text.startswith(stream.shown) and text != stream.shown:
        yield chunk(text[len(stream.shown):], None)
    yield chunk(None, _finish(served, tokens, settings))
    yield "data: [DONE]\n\n"


def _error_event(message: str, code: int) -> str:
    """An error once a stream has begun (its status is sent already): as OpenAI sends it."""
    return f"data: {json.dumps({'error': {'message': message, 'code': code}})}\n\n"


async def _next_piece(pieces: asyncio.Queue, timeout: float):
    try:
        return await asyncio.wait_for(pieces.get(), timeout)
    except asyncio.TimeoutError:
        return TimeoutError


def _finish(served, tokens: list[int], settings: dict) -> str:
    return "stop" if served.task.eos in tokens or len(tokens) < settings["max_new_tokens"] \
        else "length"


def _generation_settings(body: dict, served, limits: Limits) -> tuple[dict, str | None]:
    """The request's max_tokens, temperature, top_p and seed over the run's; max_tokens capped
    by --max-new-tokens-limit (said in the answer's `warning`)."""
    run = served.task.settings
    asked = _field(body, "max_tokens", int, required=False, default=run["max_new_tokens"])
    if asked < 1:
        raise ApiError(400, f"'max_tokens' must be at least 1, got {asked}")
    warning = None
    if asked > limits.max_new_tokens_limit:
        warning = (f"max_tokens {asked} capped to --max-new-tokens-limit "
                   f"{limits.max_new_tokens_limit}")
        asked = limits.max_new_tokens_limit
    temperature = _field(body, "temperature", (int, float), required=False,
                         default=run["temperature"] or 0.0)
    top_p = _field(body, "top_p", (int, float), required=False, default=run["top_p"] or 1.0)
    seed = _field(body, "seed", int, required=False, default=run["seed"] or 0)
    if temperature < 0 or not 0 < top_p <= 1:
        raise ApiError(400, "'temperature' must be at least 0 and 'top_p' in (0, 1]")
    return {"max_new_tokens": asked, "temperature": float(temperature), "top_p": float(top_p),
            "seed": seed, "num_beams": 1}, warning


# ---- request parsing --------------------------------------------------------------------------

async def _json_body(request: Request, limits: Limits) -> dict:
    body = await request.body()
    if len(body) > limits.max_body_bytes:
        raise ApiError(413, f"the body is {len(body)} bytes, over --max-body-bytes "
                            f"{limits.max_body_bytes}; send fewer or shorter texts")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false",
               (int, float): "a number"}


def _field(body: dict, name: str, kind, required: bool = True, default=None):
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, f"the body lacks {name!r}")
        return default
    value = body[name]
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not isinstance(value, kind):
        raise ApiError(400, f"{name!r} must be {_TYPE_NAMES[kind]}, got {json.dumps(value)}")
    return value


def _names(body: dict) -> list[str]:
    model = body.get("model")
    names = [model] if isinstance(model, str) else model
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "'model' must be a task name or a non-empty list of them")
    return list(dict.fromkeys(names))


def _texts(body: dict) -> list[str]:
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "'input' must be a text or a non-empty list of texts")
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ApiError(400, f"input[{empty[0]}] is empty; send text to classify")
    return texts


def _task(pool: TaskPool, name: str):
    try:
        return pool.get(name)
    except PoolError as err:
        raise ApiError(err.status, str(err)) from None


# ---- running ----------------------------------------------------------------------------------

def run_server(pool: TaskPool, limits: Limits, host: str, port: int) -> None:
    """Serve until SIGTERM (drains, then returns) or SIGINT."""
    import uvicorn
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    app = create_app(pool, limits)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=limits.timeout)

    class DrainingServer(uvicorn.Server):
        """SIGTERM: stop accepting, finish what is in, exit 0 (uvicorn itself re-raises the
        signal once drained, which would end the process with status 143)."""

        def handle_exit(self, sig, frame):
            if sig == signal.SIGTERM:
                self.should_exit = True
            else:
                super().handle_exit(sig, frame)

    print(f"laddertune serve: {len(pool.tasks)} tasks on one {pool.model_name} backbone, "
          f"listening on http://{host}:{bound}", flush=True)
    DrainingServer(config).run(sockets=[sock])
