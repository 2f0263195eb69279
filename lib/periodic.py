# A fixed grid for periodic work in asyncio tasks: a run that comes late does not push
# every later one, and a stall does not end in a burst of runs to catch up.
import time


def next_due(due, now, period):
    """The ticks_ms at which the run after the one due at `due` (and run at `now`) is
    due: `period` after `due`, or after `now` when that run came half a period or more
    late (a stall: the grid starts again). Both ticks_ms values; survives their wrap."""
    if time.ticks_diff(now, due) >= period // 2:
        return time.ticks_add(now, period)
    return time.ticks_add(due, period)
