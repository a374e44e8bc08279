"""Pausing the cyclic garbage collector while a million-row list is built or judged.

Every container allocated counts towards the collector's next pass, and each pass of the
oldest generation walks everything made so far: at 1.2 million rows that is seconds spent
finding no garbage (the rows, tuples of strings, form no cycles). The pause covers one
list's work; the collector runs again after it.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
