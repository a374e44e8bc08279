"""A step the gateway repeats in the background for as long as it runs (the buffer's fill,
the witness's look at the server). Plain: one task, a pause between steps, and a failed step
(the buffer unreachable) is only logged at debug: the requests that need the buffer say so."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger("unggah.background")


class Every:
    def __init__(self, interval: float, step: Callable[[], Awaitable[None]], name: str) -> None:
        self.interval = interval
        self.step = step
        self.name = name
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as e:
                log.debug("background step failed", extra={"step": self.name, "error": repr(e)})
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        # Wait for the task to be gone before the connection pool closes under it.
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
