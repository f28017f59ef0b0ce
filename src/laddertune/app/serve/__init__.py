"""`laddertune serve`: finished runs answered over HTTP, every task over one backbone.

`pool.TaskPool` holds the backbone once and each run's trained weights beside it;
`batching.Batcher` lets requests that arrive together share one forward; `server` is the
FastAPI app and its uvicorn server. docs/serving.md covers deployment.
"""

from __future__ import annotations

from ..options import ServeConfig, UsageError
from ..runtime import pick_device


def serve(config: ServeConfig) -> None:
    """Load every --checkpoint over one backbone, then serve until SIGTERM."""
    try:
        from .server import Limits, run_server
    except ImportError as err:
        raise UsageError(f"laddertune serve needs FastAPI and uvicorn ({err.name} is missing); "
                         "pip install 'laddertune[serve]'") from None
    from .pool import TaskPool, parse_checkpoint
    checkpoints = [parse_checkpoint(text) for text in config.checkpoint]
    names = [name for name, _ in checkpoints]
    taken = sorted({name for name in names if names.count(name) > 1})
    if taken:
        raise UsageError(f"--checkpoint names {taken[0]!r} twice; name each NAME=DIR")
    pool = TaskPool(checkpoints, pick_device(config.device))
    max_length = config.max_length or min(t.max_length for t in pool.tasks.values())
    limits = Limits(config.max_batch_size, config.max_wait_ms, config.max_queue, config.timeout,
                    config.max_new_tokens_limit, max_length, config.max_body_bytes)
    run_server(pool, limits, config.host, config.port)


__all__ = ["serve"]
