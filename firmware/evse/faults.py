# The manual's error table: one bit per code, what the display shows, whether the trip
# latches, the OCPP error code and what clears it. Detection lives in protection.py.
#
# Bits are small ints so the trip path (which may run in an IRQ handler) only ORs an
# integer: no allocation.
from micropython import const

OCP = const(1 << 0)  # over-current
OVP = const(1 << 1)  # over-voltage
LVP = const(1 << 2)  # under-voltage
MET = const(1 << 3)  # meter communication (internal or external meter)
PE = const(1 << 4)  # ground fault
CP = const(1 << 5)  # control-pilot fault (state E, missing diode, out-of-window)
R12 = const(1 << 6)  # relay 1 (L1/L2) blocked
R3N = const(1 << 7)  # relay 2 (L3/N) blocked
ROT = const(1 << 8)  # relay over-temperature
ELK = const(1 << 9)  # electronic lock failure
OCT = const(1 << 10)  # plug holder (socket) over-temperature
IRD = const(1 << 11)  # residual current (leakage)
FAN = const(1 << 12)  # fan blocked
PP = const(1 << 13)  # unreliable cable connection (proximity pilot)
MIS = const(1 << 14)  # missing phase
CAN = const(1 << 15)  # CAN bus address clash (shown as ERR CAN ADDR)
# Not a trip, never set in Charger.active: a stored setting that cannot be used, shown
# while settings.invalid names one, or an OCPP file that cannot be read (app.errors; the
# charger goes on with the safe value).
CFG = const(1 << 16)
LAT = const(1 << 17)  # latched.json unreadable: which trips were latched is unknown

# code, bit, latches, OCPP ChargePointErrorCode, what the driver is told, what clears it
# (its thresholds filled in from protection.py's constants: protection.clear_text())
TABLE = (
    ("OCP", OCP, False, "OverCurrentFailure", "Over-current fault",
     "%d s after the trip; charging resumes through a fresh pilot handshake"),
    ("OVP", OVP, False, "OverVoltage", "Over-voltage fault",
     "every phase below %g V for %d s"),
    ("LVP", LVP, False, "UnderVoltage", "Under-voltage fault",
     "every used phase above %g V for %d s"),
    ("MET", MET, False, "PowerMeterFailure", "Meter communication fault",
     "the meter answers again for %d s"),
    ("PE", PE, True, "GroundFailure", "Ground fault",
     "technician clears it (web Report page or API) once the earth is restored"),
    ("CP", CP, False, "EVCommunicationError", "CP voltage fault",
     "a valid pilot level (state A or B, diode present) for %d s"),
    ("R12", R12, True, "PowerSwitchFailure", "Relay 1 blocked fault",
     "welded: technician clears it after repair; stuck open: vehicle unplugged"),
    ("R3N", R3N, True, "PowerSwitchFailure", "Relay 2 blocked fault",
     "welded: technician clears it after repair; stuck open: vehicle unplugged"),
    ("ROT", ROT, False, "HighTemperature", "Relay over-temperature fault",
     "relay temperature below %g °C"),
    ("ELK", ELK, True, "ConnectorLockFailure", "Electronic lock abnormal fault",
     "a lock that never confirmed: the vehicle unplugged (the third plug-in in a row "
     "latches); a lock lost or not unlocking: technician clears it once the lock works"),
    ("OCT", OCT, False, "HighTemperature", "Plug holder over-temperature fault",
     "socket temperature below %g °C"),
    ("IRD", IRD, True, "GroundFailure", "Leakage fault",
     "technician clears it; the RCD self-test must pass before the next charge"),
    ("FAN", FAN, False, "OtherError", "Fan fault (the fan is blocked)",
     "the fan spins again (re-tried every %d s)"),
    ("PP", PP, False, "OtherError", "Unreliable connection fault",
     "a valid cable resistance, or the vehicle unplugged"),
    ("MIS", MIS, False, "OtherError", "Missing power phase fault",
     "every phase of the model present (above %g V) for %d s"),
    ("CAN", CAN, False, "OtherError", "CAN bus address fault",
     "the address clash is gone for %d s"),
    ("LAT", LAT, True, "InternalError", "Latched-trip record unreadable: the protective "
     "trips latched before are unknown", "technician clears it after checking the charger"),
    ("CFG", CFG, False, "OtherError", "Configuration error: a setting could not be used, "
     "its safe value is in use", "each setting named is saved again (configuration page or API)"),
)

LATCHING = 0
for _row in TABLE:
    if _row[2]:
        LATCHING |= _row[1]
# R12/R3N latch only when welded; a stuck-open relay clears on unplug (protection.py).
# ELK latches unless the lock never confirmed at the start of a session (charger.py).


def codes(bits):
    """Manual codes of the set bits, in table order."""
    return [row[0] for row in TABLE if bits & row[1]]


def bit(code):
    r = row(code)
    if r is None:
        raise KeyError(code)
    return r[1]


def row(code):
    # A scan of the table (in flash on a frozen build) rather than a dict in the heap.
    for r in TABLE:
        if r[0] == code:
            return r
    return None


def display_text(code):
    return "ERR CAN ADDR" if code == "CAN" else "ERR " + code


def ocpp_error(bits):
    """The OCPP error code of the first active fault (table order), or NoError."""
    for row in TABLE:
        if bits & row[1]:
            return row[3]
    return "NoError"
