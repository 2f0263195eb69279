# The pilot as a car asleep in B follows it: deaf to the PWM until the wake-up sequence
# of IEC 61851-1:2017 A.5.3 (STANDARDS.md §1.4: F, then X1, then the PWM again). Used by
# the simulated plant (µs) and the unit tests' fake car (ms): times are in the caller's
# unit.

from cpduty import DUTY_F


class Sleeper:
    """f_min, x1_min: the shortest F and X1 the car takes for a wake-up; close_after: how
    long into the PWM that followed the woken car closes S2."""

    def __init__(self, f_min, x1_min, close_after):
        self.f_min = f_min
        self.x1_min = x1_min
        self.close_after = close_after
        self.mode = None  # "F", "X1" or "PWM"
        self.since = 0
        self.f_done = False  # a long enough F just went to X1
        self.woken = False

    def see(self, now, duty_pm, asleep):
        """The pilot's duty at `now`. True once, when the woken car closes S2."""
        if duty_pm == DUTY_F or duty_pm == 0:
            mode = "F"
        elif duty_pm < 0 or duty_pm >= 1000:
            mode = "X1"
        else:
            mode = "PWM"
        if mode != self.mode:
            held = now - self.since
            if self.mode == "F":
                self.f_done = mode == "X1" and held >= self.f_min
            else:
                if self.f_done and mode == "PWM" and held >= self.x1_min:
                    self.woken = asleep
                self.f_done = False
            self.mode = mode
            self.since = now
        if not asleep:
            self.woken = False
        elif self.woken and mode == "PWM" and now - self.since >= self.close_after:
            self.woken = False
            return True
        return False
