"""Batches, as the doors see them (``JobService`` inherits ``BatchOps``): many jobs submitted
in one request and stored in one transaction, then followed, waited on and canceled together;
and waiting on any set of jobs at once.

A batch is all or nothing: if any item is invalid, the answer lists every bad item (its
position and field) and nothing is stored, so a caller fixes them and sends the same request
again, with the same keys. Waiters on many jobs hold one subscription for all of them
(``JobEvents.subscribe_many``), woken by their status changes only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from deepexec_sdk.types import MAX_BATCH_JOBS, BatchJobRequest, JobStatus

from ..domain import (
    Batch,
    CreatedBatch,
    IdempotencyConflicts,
    Job,
    JobSummary,
    NewBatch,
    NewJob,
    utcnow,
)
from ..errors import Conflict, Unavailable, Unprocessable, batch_not_found, job_not_found
from .admission import admit, request_fingerprint
from .events import Subscription
from .outcomes import announce_end
from .parts import EnginePart

#: How often a waiter re-reads the store, in case the change happened in another process.
STORE_RECHECK_SECONDS = 2.0
#: After the first of the jobs a ``wait_jobs`` names has ended, how long it gathers others
#: that end before answering.
WAIT_GATHER_SECONDS = 0.05
#: Bytes of results one answer of ``wait_jobs`` carries at most (at least one job, whatever
#: its size): the others are left for the next call.
WAIT_ANSWER_MAX_BYTES = 8 * 1024 * 1024

Progress = tuple[Batch, dict[JobStatus, int]]


def batch_done(counts: dict[JobStatus, int]) -> bool:
    """Whether every job of a batch with these counts has ended."""
    return not any(n for status, n in counts.items() if not status.is_terminal)


def item_problems(index: int, exc: Unprocessable) -> list[dict[str, Any]]:
    """An item's refusal as the batch answer's details: each names the item's ``index``."""
    details = exc.details if isinstance(exc.details, list) else []
    found = [
        {"index": index, **d, "type": d.get("type", exc.type)}
        for d in details
        if isinstance(d, dict)
    ]
    return found or [
        {"index": index, "loc": ["body", "jobs", index], "msg": exc.message, "type": exc.type}
    ]


def invalid_batch(total: int, problems: list[dict[str, Any]]) -> Unprocessable:
    bad = sorted({p["index"] for p in problems})
    shown = "; ".join(
        f"jobs[{p['index']}]" + "".join(f".{x}" for x in p["loc"][3:]) + f": {p['msg']}"
        for p in problems[:5]
    )
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return Unprocessable(
        f"{len(bad)} of {total} jobs are invalid, so none was stored: {shown}{more}",
        type="invalid_batch",
        details=problems,
    )


class BatchOps(EnginePart):
    """Submit, follow, wait on and cancel batches; wait on many jobs."""

    _stopping = False

    async def submit_batch(
        self, tenant_id: str, items: Sequence[Any], idempotency_key: str | None
    ) -> CreatedBatch:
        """Validate every item (each the JSON of a ``BatchJobRequest``) and store them all in
        one transaction, or raise ``Unprocessable`` (``invalid_batch``) listing every bad
        item and store nothing."""
        if self._stopping:
            raise Unavailable("the server is shutting down", type="shutting_down")
        if not 0 < len(items) <= MAX_BATCH_JOBS:
            raise Unprocessable(
                f"a batch holds 1 to {MAX_BATCH_JOBS} jobs, not {len(items)}",
                details=[{"loc": ["body", "jobs"], "msg": f"1 to {MAX_BATCH_JOBS} jobs"}],
            )
        news, plains, problems = await self._admit_items(tenant_id, items)
        if problems:
            raise invalid_batch(len(items), problems)
        fingerprint = request_fingerprint({"jobs": plains})
        new = NewBatch(tenant_id, tuple(news), idempotency_key, fingerprint)
        await self.quotas.admit(tenant_id, len(news), [n.timeout for n in news])
        try:
            made = await self.store.create_batch(new, utcnow())
        except IdempotencyConflicts as exc:
            self.quotas.returned(tenant_id, len(news))
            raise Conflict(
                f"{len(exc.items)} job(s) of this batch carry an idempotency_key already used "
                "for a different request, so none was stored; use new keys for new jobs",
                type="idempotency_conflict",
                details=[
                    {
                        "index": i,
                        "loc": ["body", "jobs", i, "idempotency_key"],
                        "msg": "already used for a different request",
                        "job_id": job_id,
                    }
                    for i, job_id in exc.items
                ],
            ) from None
        except BaseException:
            self.quotas.returned(tenant_id, len(news))
            raise
        if made.replayed and made.batch.fingerprint != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used for a different batch; "
                "use a new key for a new batch",
                type="idempotency_conflict",
                details={"batch_id": made.batch.id},
            )
        self.quotas.returned(tenant_id, len(news) - sum(made.created))
        new_types = Counter(j.job_type for j, c in zip(made.jobs, made.created, strict=True) if c)
        for job_type, n in new_types.items():
            self.metrics.jobs_submitted.labels(job_type).inc(n)
            self.hub.notify_submitted(job_type)
        return made

    async def _admit_items(
        self, tenant_id: str, items: Sequence[Any]
    ) -> tuple[list[NewJob], list[dict[str, Any]], list[dict[str, Any]]]:
        """Each item's job and its JSON (what the batch's fingerprint hashes); or the
        problems of every bad item."""
        news: list[NewJob] = []
        plains: list[dict[str, Any]] = []
        problems: list[dict[str, Any]] = []
        keys: dict[str, int] = {}
        for index, raw in enumerate(items):
            loc = ("body", "jobs", index)
            try:
                item = BatchJobRequest.model_validate(raw)
            except ValidationError as exc:
                problems += [
                    {"index": index, "loc": [*loc, *e["loc"]], "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors()
                ]
                continue
            key = item.idempotency_key
            if key is not None and keys.setdefault(key, index) != index:
                problems.append(
                    {
                        "index": index,
                        "loc": [*loc, "idempotency_key"],
                        "msg": f"the same key as jobs[{keys[key]}]: each job needs its own",
                        "type": "duplicate_idempotency_key",
                    }
                )
                continue
            # The item's own JSON without its key, as a single submit's: a job submitted
            # alone and then as part of a batch with the same key is the same request.
            plain = item.model_dump(mode="json", exclude={"idempotency_key"})
            try:
                news.append(await admit(self, tenant_id, item, key, plain, loc))
            except Unprocessable as exc:
                problems += item_problems(index, exc)
            plains.append({**plain, "idempotency_key": key})
        return news, plains, problems

    async def batch_status(self, tenant_id: str, batch_id: str, wait: float = 0) -> Progress:
        """The batch and its counts by status; with ``wait`` > 0, once every job has ended
        or after that many seconds."""
        found = await self.store.batch_progress(batch_id, tenant_id)
        if found is None:
            raise batch_not_found(batch_id)
        if wait <= 0 or batch_done(found[1]):
            return found
        ids = await self.store.batch_job_ids(batch_id, tenant_id) or []
        with self.hub.subscribe_many(ids, tenant_id=tenant_id) as sub:
            # Read after subscribing: an end before this read is in it, one after wakes us.
            states = await self.store.job_states(ids, tenant_id)
            open_ids = {i for i, (status, _) in states.items() if not status.is_terminal}
            await self._await_ends(tenant_id, sub, open_ids, wait, every=True)
        found = await self.store.batch_progress(batch_id, tenant_id)
        if found is None:
            raise batch_not_found(batch_id)
        return found

    async def list_batch_jobs(
        self,
        tenant_id: str,
        batch_id: str,
        status: JobStatus | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[JobSummary], str | None]:
        """A page of the batch's jobs in request order; the cursor continues it."""
        after = None
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 9:
                raise Unprocessable(
                    "invalid cursor: pass back the next_cursor of a previous page",
                    details=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
                )
            after = int(cursor)
        rows = await self.store.list_batch_jobs(batch_id, tenant_id, status, limit + 1, after)
        if rows is None:
            raise batch_not_found(batch_id)
        next_cursor = str(rows[limit - 1][0]) if len(rows) > limit else None
        return [summary for _, summary in rows[:limit]], next_cursor

    async def cancel_batch(
        self, tenant_id: str, batch_id: str, reason: str | None
    ) -> tuple[int, Progress]:
        """Cancel every pending job of the batch and ask its running ones to stop; returns
        how many jobs this changed, and the batch's progress. Does not wait for the running
        ones: wait on the batch for that."""
        if reason is not None and "\x00" in reason:
            raise Unprocessable(
                "the reason must not contain the NUL character (\\u0000)",
                details=[{"loc": ["body", "reason"], "msg": "contains U+0000"}],
            )
        changed = await self.store.cancel_batch(batch_id, tenant_id, reason, utcnow())
        if changed is None:
            raise batch_not_found(batch_id)
        for job in changed:
            if job.status == JobStatus.CANCELED:
                announce_end(job, self.hub, self.metrics)
            else:
                self.hub.notify_cancel(job.id)
        found = await self.store.batch_progress(batch_id, tenant_id)
        if found is None:
            raise batch_not_found(batch_id)
        return len(changed), found

    async def wait_jobs(
        self, tenant_id: str, job_ids: list[str], wait: float
    ) -> tuple[list[Job], list[str]]:
        """Those of ``job_ids`` that have ended, in full (in the order given, up to
        ``WAIT_ANSWER_MAX_BYTES`` of results), once at least one has or after ``wait``
        seconds; and the ids of the others. ``NotFound`` names an id the tenant lacks."""
        ids = list(dict.fromkeys(job_ids))
        with self.hub.subscribe_many(ids, tenant_id=tenant_id) as sub:
            states = await self.store.job_states(ids, tenant_id)
            missing = [i for i in ids if i not in states]
            if missing:
                error = job_not_found(missing[0])
                error.details = {"job_ids": missing[:20], "missing": len(missing)}
                raise error
            open_ids = {i for i, (status, _) in states.items() if not status.is_terminal}
            if len(open_ids) == len(ids) and wait > 0:
                await self._await_ends(tenant_id, sub, open_ids, wait, every=False)
                states = await self.store.job_states(set(ids) - open_ids, tenant_id)
        ended = [i for i in ids if i not in open_ids and i in states]
        take: list[str] = []
        size = 0
        for job_id in ended:
            # Sizes as they were read: a result purged since is smaller, never larger.
            size += states[job_id][1]
            if take and size > WAIT_ANSWER_MAX_BYTES:
                break
            take.append(job_id)
        found = {j.id: j for j in await self.store.get_jobs(take, tenant_id)}
        jobs = [found[i] for i in take if i in found]
        returned = {j.id for j in jobs}
        return jobs, [i for i in ids if i not in returned]

    async def _await_ends(
        self,
        tenant_id: str,
        sub: Subscription,
        open_ids: set[str],
        timeout: float,
        *,
        every: bool,
    ) -> None:
        """Wait until every one (``every``) or any one of ``open_ids`` has ended (then up to
        ``WAIT_GATHER_SECONDS`` more for others), or ``timeout`` seconds; ``open_ids`` loses
        each that ended. Woken by status events; the
        store is read again every ``STORE_RECHECK_SECONDS`` in case an event was missed."""
        deadline = time.monotonic() + timeout
        while open_ids:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            shared = await sub.get(min(remaining, STORE_RECHECK_SECONDS))
            ended: set[str] = set()
            if shared is None:
                states = await self.store.job_states(open_ids, tenant_id)
                ended = {i for i in open_ids if i not in states or states[i][0].is_terminal}
            while shared is not None:
                event = shared.event
                if event.type == "status" and event.job is not None and event.job.is_terminal:
                    ended.add(event.job_id)
                shared = await sub.get(0)  # what else has queued, without waiting
            open_ids -= ended
            if ended and not every:
                # Others often end moments later (a batch's jobs end in waves): gather them
                # into this answer, rather than one request per job.
                deadline = min(deadline, time.monotonic() + WAIT_GATHER_SECONDS)
                every = True
