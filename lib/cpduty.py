# The control pilot output's `duty_pm` of the board contract (docs/hal.md, `hw.cp`): the
# PWM duty in per-mille (0..1000) while it runs, else one of these static levels. Boards
# set it with the output, the charger and the simulated plant read it.
from micropython import const

DUTY_X1 = const(-1)  # static +12 V (X1): nothing offered
DUTY_F = const(-2)  # static -12 V: state F
