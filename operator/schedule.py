"""When a scheduled run is due: cron in a time zone, suspend, and the starting deadline.

Like a CronJob, a run missed while the operator was down starts once (not once per missed
tick), and only if its scheduled time is within `startingDeadlineSeconds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from metatide.operator.model import ScheduleSpec, previous_fire_time


@dataclass(frozen=True, slots=True)
class Due:
    """The latest scheduled time that has passed, and whether it may still start."""

    scheduled_at: datetime
    within_deadline: bool


def latest_due(schedule: ScheduleSpec, since: datetime, now: datetime) -> Due | None:
    """The newest fire time in (since, now], if any: missed ticks collapse into one."""
    latest = previous_fire_time(schedule, now)
    if latest <= since:
        return None
    deadline = schedule.starting_deadline_seconds
    within = deadline is None or now - latest <= timedelta(seconds=deadline)
    return Due(latest, within)
