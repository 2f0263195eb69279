# ISO 8601 date-times of OCPP (§3.15) <-> epoch seconds (UTC), independent of the port's
# own epoch (gmtime counts from 2000 on some MCUs) and of any time zone.
#
# parse accepts "2024-05-01T12:00:00Z", fractions ("…:00.123456Z") and offsets
# ("+02:00", "-0500"); a time without a zone is taken as UTC. fmt writes "…Z".


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z):
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def _num(s, a, b):
    v = s[a:b]
    if len(v) != b - a or not v.isdigit():
        raise ValueError("bad date-time")
    return int(v)


def parse(s):
    """Epoch seconds (int) of an ISO 8601 date-time; ValueError when malformed."""
    if not isinstance(s, str) or len(s) < 19 or s[4] != "-" or s[7] != "-" or s[10] not in "Tt " or s[13] != ":" or s[16] != ":":
        raise ValueError("bad date-time")
    y = _num(s, 0, 4)
    mo = _num(s, 5, 7)
    d = _num(s, 8, 10)
    h = _num(s, 11, 13)
    mi = _num(s, 14, 16)
    sec = _num(s, 17, 19)
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and sec <= 60):
        raise ValueError("date-time out of range")
    i = 19
    n = len(s)
    if i < n and s[i] in ".,":
        i += 1
        j = i
        while i < n and s[i].isdigit():
            i += 1
        if i == j:
            raise ValueError("bad fraction")
    off = 0
    if i < n:
        z = s[i:]
        if z in ("Z", "z"):
            pass
        elif z[0] in "+-" and len(z) in (3, 5, 6):
            oh = _num(z, 1, 3)
            om = 0 if len(z) == 3 else (_num(z, 4, 6) if z[3] == ":" else _num(z, 3, 5))
            off = (oh * 60 + om) * 60
            if z[0] == "-":
                off = -off
        else:
            raise ValueError("bad time zone")
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - off


def fmt(epoch_s):
    """'YYYY-MM-DDTHH:MM:SSZ' of epoch seconds."""
    epoch_s = int(epoch_s)
    days, rem = divmod(epoch_s, 86400)
    y, m, d = civil_from_days(days)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, rem // 3600, rem // 60 % 60, rem % 60)
