"""The one retry policy of DeepExec: which answers say "try again later", and how long to wait.

The SDK's clients use it for their requests to a DeepExec server, and the server uses it for its
requests to OpenAI-compatible model servers. Pure: no I/O, no clock (the caller passes ``now``
and the random ``jitter``), so every decision is unit-tested.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses that say "try again later". 500 is a bug and 409 a real conflict: neither is
#: retried.
RETRYABLE_STATUS_CODES = frozenset({408, 429, 502, 503, 504})


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, ``Retry-After`` honoured up to a cap.

    ``max_retries`` retries follow the first attempt. A ``Retry-After`` longer than
    ``retry_after_cap`` is waited for ``retry_after_cap`` seconds, unless ``give_up_past_cap``
    (work that has to end within a job's time limit gives up rather than sleep that long).
    """

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    retry_after_cap: float = 60.0
    give_up_past_cap: bool = False

    def allows(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (0 for the first) may be followed by another."""
        return attempt < self.max_retries

    def backoff(self, attempt: int, *, jitter: float) -> float:
        """Uniform in ``[0, min(backoff_cap, backoff_base * 2**attempt))`` for ``jitter`` in
        ``[0, 1)``: clients that failed together do not retry together."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt, 32))
        return max(0.0, min(jitter, 1.0)) * ceiling

    def delay(
        self,
        attempt: int,
        *,
        jitter: float,
        retry_after: float | None = None,
        time_left: float | None = None,
    ) -> float | None:
        """Seconds to wait before retrying after attempt ``attempt`` failed with a retryable
        error, or None to give up: attempts used up, a ``Retry-After`` past the cap with
        ``give_up_past_cap``, or a wait that would not end within ``time_left`` seconds."""
        if not self.allows(attempt):
            return None
        if retry_after is None:
            delay = self.backoff(attempt, jitter=jitter)
        elif retry_after > self.retry_after_cap:
            if self.give_up_past_cap:
                return None
            delay = self.retry_after_cap
        else:
            delay = retry_after
        if time_left is not None and delay >= time_left:
            return None
        return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date), or None
    when it is absent or unreadable. A date in the past means "now" (0)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
