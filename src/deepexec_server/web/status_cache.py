"""The cache of terminal jobs' status JSON that status reads are answered from
(``api/hot_routes.py``, ``api/jobs.py``), emptied of purged results by the engine."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

#: Bytes of terminal statuses kept, and the largest one worth keeping.
CACHE_BYTES = 16 * 1024 * 1024
CACHE_ITEM_BYTES = 256 * 1024
#: Seconds a kept status is served before the store is read again: the bound on how long
#: a result purged by another process sharing the store may still be served from here.
CACHE_MAX_AGE_SECONDS = 60.0


class TerminalCache:
    """The JSON of terminal jobs by id, least recently used out first, within a byte budget.

    Sound because a terminal job changes once at most: its status, result and error are
    written by the transition that ended it, and later only its result may be purged. A purge
    by this process's engine drops the job from here (``discard``); one by another process
    sharing the store is seen once the entry is ``max_age`` seconds old. Each entry keeps its
    tenant, so a hit for another tenant is still a miss (and a 404 from the store).
    """

    def __init__(
        self,
        max_bytes: int = CACHE_BYTES,
        max_item_bytes: int = CACHE_ITEM_BYTES,
        max_age: float = CACHE_MAX_AGE_SECONDS,
    ):
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self.max_age = max_age
        self.size = 0
        #: Per job id: its tenant, its body, and until when (monotonic) it may be served.
        self._items: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, tenant_id: str, job_id: str) -> bytes | None:
        item = self._items.get(job_id)
        if item is None or item[0] != tenant_id:
            return None
        if item[2] < time.monotonic():
            self._drop(job_id)
            return None
        self._items.move_to_end(job_id)
        return item[1]

    def discard(self, job_ids: Iterable[str]) -> None:
        """Forget these jobs (their results were purged)."""
        for job_id in job_ids:
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        item = self._items.pop(job_id, None)
        if item is not None:
            self.size -= len(item[1])

    def put(self, tenant_id: str, job_id: str, body: bytes) -> None:
        """Keep ``body`` as the status of ``tenant_id``'s terminal job ``job_id``, unless it
        is too big. Only ever call it for a terminal job."""
        if len(body) > self.max_item_bytes or job_id in self._items:
            return
        self._items[job_id] = (tenant_id, body, time.monotonic() + self.max_age)
        self.size += len(body)
        while self.size > self.max_bytes:
            _, (_, old, _) = self._items.popitem(last=False)
            self.size -= len(old)
