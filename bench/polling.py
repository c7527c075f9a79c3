"""Status calls per job and the delay they add, for the fixed poll interval and the schedule
that learns from recent jobs (bot/segmind/polling.py), on simulated SAM 3D durations.

    python bench/polling.py [--jobs 500] [--mean-s 30] [--spread-s 5] [--interval-s 2]

A simulation of the schedule itself (no network): each job's duration is drawn from a normal
distribution; a job is seen done at the first poll at or after its duration."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.segmind.polling import PollSchedule


def follow(schedule: PollSchedule, duration: float) -> tuple[int, float]:
    """How many polls the job takes, and how late the last one is after it finished."""
    calls = 0
    for offset in schedule.offsets():
        calls += 1
        if offset >= duration:
            return calls, offset - duration
    raise AssertionError("unreachable")


def run(
    durations: list[float], schedule: PollSchedule, learn: bool
) -> tuple[list[int], list[float]]:
    calls, delays = [], []
    for duration in durations:
        made, late = follow(schedule, duration)
        calls.append(made)
        delays.append(late)
        if learn:
            schedule.learn(duration + late)
    return calls, delays


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--mean-s", type=float, default=30.0)
    parser.add_argument("--spread-s", type=float, default=5.0)
    parser.add_argument("--interval-s", type=float, default=2.0)
    args = parser.parse_args()
    rng = random.Random(1)
    durations = [max(5.0, rng.gauss(args.mean_s, args.spread_s)) for _ in range(args.jobs)]
    print(
        f"{args.jobs} jobs, duration {args.mean_s:g} ± {args.spread_s:g} s, "
        f"POLL_INTERVAL {args.interval_s:g} s"
    )
    print("schedule   calls/job (mean, p95)   added delay s (p50, p95, max)")
    for name, learn in (("fixed", False), ("learnt", True)):
        calls, delays = run(durations, PollSchedule(args.interval_s), learn)
        print(
            f"{name:<10} {statistics.mean(calls):6.1f} {percentile(calls, 0.95):6.0f}"
            f"              {percentile(delays, 0.5):5.2f} {percentile(delays, 0.95):5.2f}"
            f" {max(delays):5.2f}"
        )


if __name__ == "__main__":
    main()
