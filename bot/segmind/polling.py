"""When to ask Segmind how a job is doing. A fixed interval asks about 15 times for a job
that takes 30 s, each call against the account's rate limit; once a few jobs have been seen,
the schedule asks once at once (an early failure, "processing"), then only every few intervals
until the time most jobs take (the quickest tenth of the last ones), then at a shorter interval.
bench/polling.py measures both."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

REMEMBER = 20  # jobs whose durations shape the schedule
LEARN_AFTER = 3  # jobs seen before the schedule trusts what it saw
QUICK_SHARE = 0.1  # the first wait is what the quickest tenth of recent jobs took
LONG_STEPS = 4  # before it, a poll every this many intervals


class PollSchedule:
    def __init__(self, interval_s: float, short_s: float | None = None) -> None:
        self.interval_s = interval_s
        self.short_s = short_s if short_s is not None else interval_s * 0.75
        self.long_s = interval_s * LONG_STEPS
        self._durations: deque[float] = deque(maxlen=REMEMBER)

    def learn(self, seconds: float) -> None:
        """How long a job took from its submit to the poll that saw it done."""
        if seconds >= 0:
            self._durations.append(seconds)

    @property
    def first_wait_s(self) -> float | None:
        """When to ask the second time, if the schedule has learnt it."""
        if len(self._durations) < LEARN_AFTER:
            return None
        ordered = sorted(self._durations)
        quick = ordered[int(QUICK_SHARE * (len(ordered) - 1))]
        return max(self.interval_s, quick - self.short_s)

    def offsets(self) -> Iterator[float]:
        """Seconds after the submit at which to poll: 0, then as learnt (or every interval)."""
        yield 0.0
        first = self.first_wait_s
        if first is None:
            step, at = self.interval_s, self.interval_s
        else:
            # Until then, now and again (a job much quicker than most is not kept waiting).
            at = self.long_s
            while at + self.short_s < first:
                yield at
                at += self.long_s
            step, at = self.short_s, first
        while True:
            yield at
            at += step
