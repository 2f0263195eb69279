# lib/periodic.py: the fixed grid of the control tick, the balancer and its cycles.
import time

from check import eq
from periodic import next_due


def test_on_time_and_a_little_late_keep_the_grid():
    eq(next_due(1000, 1000, 100), 1100, "on time")
    eq(next_due(1000, 1049, 100), 1100, "49 ms late: the next one stays on the grid")


def test_half_a_period_late_starts_the_grid_again():
    eq(next_due(1000, 1050, 100), 1150, "no second run 50 ms later")
    eq(next_due(1000, 4321, 1000), 5321, "a stall: no burst of runs to catch up")


def test_across_the_ticks_wrap():
    top = time.ticks_add(0, -50)  # 50 ms before the wrap
    eq(next_due(top, top, 100), time.ticks_add(top, 100), "on time")
    eq(time.ticks_diff(next_due(top, time.ticks_add(top, 80), 100), top), 180,
       "late across the wrap")
