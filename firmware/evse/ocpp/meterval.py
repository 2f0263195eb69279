# Meter values (OCPP 1.6 §7.31, STANDARDS.md §4.7) from the charger's own readings:
# the internal meter (metering.py), the current the pilot offers and the socket
# temperature. Values are strings, as the spec wants.
from evse.ocpp import isotime

VOLTS = 230.0


def _sv(out, value, context, measurand, unit, phase=None):
    sv = {"value": value, "context": context, "measurand": measurand}
    if unit:
        sv["unit"] = unit
    if phase:
        sv["phase"] = phase
    out.append(sv)


def sampled(cp, names, context):
    """The sampledValue list of the measurands named in `names` (comma separated), read
    from the charge point's metering, charger and board (chargepoint.py)."""
    m = cp.metering
    ch = cp.ch
    ph = ch.phases
    out = []
    for name in names.split(","):
        if name == "Energy.Active.Import.Register":
            _sv(out, "%d" % m.energy_wh, context, name, "Wh")
        elif name == "Power.Active.Import":
            _sv(out, "%.1f" % m.power_w, context, name, "W")
        elif name == "Power.Offered":
            _sv(out, "%.1f" % (ch.offered_a * VOLTS * ph), context, name, "W")
        elif name == "Current.Import":
            for i in range(ph):
                _sv(out, "%.2f" % m.amps[i], context, name, "A", "L%d" % (i + 1))
        elif name == "Current.Offered":
            _sv(out, "%.1f" % ch.offered_a, context, name, "A")
        elif name == "Voltage":
            for i in range(ph):
                _sv(out, "%.1f" % m.volts[i], context, name, "V", "L%d-N" % (i + 1))
        elif name == "Frequency":
            _sv(out, "%.2f" % m.hz, context, name, None)
        elif name == "Temperature":
            t = cp.hw.temps.socket_c
            if t is not None:
                _sv(out, "%.1f" % t, context, name, "Celsius")
    return out


def meter_value(cp, names, context, t):
    """One MeterValue object: a timestamp and its sampled values."""
    return {"timestamp": isotime.fmt(t), "sampledValue": sampled(cp, names, context)}
