"""What a call costs, decided from its request before any work, and the budget heavy calls share.

A call's ``Cost`` counts what the service would do for it: searches and the hits they return, raw ECGs
to prepare and their samples, file bytes to decode, and the reply's estimated size. The door
(``door.py``) computes it first: a reply that cannot fit the message limit is refused
(``ReplyTooLarge``, RESOURCE_EXHAUSTED) before any search, and a heavy call waits for its weight in the
``HeavyBudget`` so that light calls, which never wait for it, keep answering while heavy ones queue.

The reply estimate is ``hits x HitSize.estimate`` plus small per-result and summary terms. ``HitSize``
is measured, not guessed: the mean wire size of stored hits, sampled when the service opens and
re-sampled with the collection statistics, times ``MARGIN``. A reply of many hits has a size close to
its hit count times the mean; the door still meters the reply as it is built (``ReplyMeter``) and
stops a call whose hits turn out larger than estimated as soon as it passes the limit, so an
estimate that is off costs one reply's work at most, never a reply over the limit.

No grpc here: the door and the benchmarks use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ecgsearch.search.api import Budget, Cancelled, DeadlineExceeded

log = logging.getLogger("ecgsearch.cost")

MARGIN = 1.15  # the estimate's head room over the sampled mean hit size
MIN_HIT_BYTES = 64  # a hit's id, score and the smallest payload: the floor of any estimate
DEFAULT_HIT_BYTES = 512  # before a sample was taken (an empty collection)
RESULT_BYTES = 16  # per search result: its tags and lengths, and an empty summary
SUMMARY_ROW_BYTES = 216  # one DiagnosisConcentration: code, description (cut at ~120), 7 numbers, 2 flags
PREPARED_BYTES = 12 * 1000 * 4  # one prepared ECG (12 leads x 10 s at 100 Hz, float32)
RECORDED_BYTES = 12 * 10_000 * 4  # one ECG as recorded, priced as 10 s at 1 kHz (GetEcg as_recorded)
HEAVY_BYTES = 1 << 20  # a call weighing more than this runs under the heavy budget
WAIT_POLL_S = 0.5  # how often a waiting heavy call looks at its caller's cancellation


class ReplyTooLarge(Exception):
    """The reply cannot fit the message limit (maps to RESOURCE_EXHAUSTED); names the bound."""


class Overloaded(Exception):
    """The heavy budget's queue is full (maps to RESOURCE_EXHAUSTED): retry later."""


@dataclass(frozen=True)
class Cost:
    """What one call asks the service to do; every field is read off the request alone."""

    searches: int = 0
    hits: int = 0  # the sum of k over its searches
    ecgs: int = 0  # raw ECGs and files to prepare
    samples: int = 0  # raw samples to read
    file_bytes: int = 0  # file bytes to decode
    reply_bytes: int = 0  # estimated size of the reply

    @property
    def weight(self) -> int:
        """Bytes the call handles, as the heavy budget counts them: reply, samples, files, prepared ECGs."""
        return self.reply_bytes + 4 * self.samples + self.file_bytes + self.ecgs * PREPARED_BYTES

    @property
    def heavy(self) -> bool:
        return self.weight > HEAVY_BYTES


class HitSize:
    """The wire size of a hit the reply estimate uses: the sampled mean times ``MARGIN``."""

    def __init__(self) -> None:
        self.mean = float(DEFAULT_HIT_BYTES)
        self.largest = DEFAULT_HIT_BYTES
        self.sampled = 0

    def observe(self, sizes: Sequence[int]) -> None:
        """Replace the sample (sizes of serialized hits); an empty sample keeps the last one."""
        if sizes:
            self.mean = sum(sizes) / len(sizes)
            self.largest = max(sizes)
            self.sampled = len(sizes)

    @property
    def estimate(self) -> int:
        return max(MIN_HIT_BYTES, int(self.mean * MARGIN + 0.5))


def search_cost(
    ks: Sequence[int],
    hit: HitSize,
    *,
    summaries: int = 0,
    summary_rows: int = 0,
    ecgs: int = 0,
    samples: int = 0,
    file_bytes: int = 0,
) -> Cost:
    """The cost of searches with these k (one per search): reply = hits x hit size + result overheads."""
    hits = sum(ks)
    reply = hits * hit.estimate + len(ks) * RESULT_BYTES + summaries * summary_rows * SUMMARY_ROW_BYTES
    return Cost(len(ks), hits, ecgs, samples, file_bytes, reply)


def check_reply(cost: Cost, limit: int, hit: HitSize) -> None:
    """ReplyTooLarge, naming the bound, when the estimated reply exceeds ``limit`` bytes."""
    if cost.reply_bytes > limit:
        raise ReplyTooLarge(
            f"the reply would be about {cost.reply_bytes:,} bytes ({cost.hits:,} hits over "
            f"{cost.searches:,} searches x ~{hit.estimate:,} bytes per hit), over the server's "
            f"{limit:,}-byte message limit: ask for fewer queries or a smaller k"
        )


class ReplyMeter:
    """The size of a reply as it is built; ``add`` raises ReplyTooLarge once it passes the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        if self.bytes > self.limit:
            raise ReplyTooLarge(
                f"the reply passed the server's {self.limit:,}-byte message limit while it was built "
                "(its hits are larger than estimated): ask for fewer queries or a smaller k"
            )


class HeavyBudget:
    """A weighted semaphore for heavy calls, first come first served.

    A call takes its weight (at most the whole capacity, so any call can run alone) and waits, in
    arrival order, until it fits; it stops waiting when its caller's deadline passes or it is
    cancelled. At most ``max_waiting`` calls wait: more are refused at once (``Overloaded``), so
    waiting heavy calls never hold every request thread. When the last heavy call ends, freed heap
    is handed back to the operating system (glibc's ``malloc_trim``), so memory returns near its
    resting level after a burst.
    """

    def __init__(self, capacity: int, max_waiting: int) -> None:
        self.capacity = max(1, capacity)
        self.max_waiting = max(0, max_waiting)
        self.in_use = 0
        self.running = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, weight: int, budget: Budget) -> Iterator[None]:
        need = min(max(1, weight), self.capacity)
        ticket = object()
        with self._cond:
            must_wait = bool(self._queue) or not self._fits(need)
            if must_wait and len(self._queue) >= self.max_waiting:
                raise Overloaded(
                    f"{self.running} heavy calls running and {len(self._queue)} waiting (at most "
                    f"{self.max_waiting}): retry later"
                )
            self._queue.append(ticket)
            try:
                while not (self._queue[0] is ticket and self._fits(need)):
                    budget.check("its turn in the heavy-call budget")
                    remaining = None if budget.deadline is None else budget.deadline - time.monotonic()
                    self._cond.wait(
                        WAIT_POLL_S if remaining is None else max(0.0, min(WAIT_POLL_S, remaining))
                    )
            except (DeadlineExceeded, Cancelled):
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.in_use += need
            self.running += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= need
                self.running -= 1
                idle = self.running == 0
                self._cond.notify_all()
            if idle:
                trim_heap()

    def _fits(self, need: int) -> bool:
        return self.in_use + need <= self.capacity

    @property
    def waiting(self) -> int:
        return len(self._queue)


_LIBC: ctypes.CDLL | None | bool = None


def trim_heap() -> None:
    """Give freed heap back to the operating system where the C library can (glibc); else nothing."""
    global _LIBC
    if _LIBC is None:
        try:
            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            _LIBC = libc if libc is not None and hasattr(libc, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)  # type: ignore[union-attr]
