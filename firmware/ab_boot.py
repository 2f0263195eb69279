# A/B firmware selection at boot (docs/ota.md). main.py calls select() before it imports
# anything that an upgrade may replace: the board module, lib/ and evse/ all come from
# the slot chosen here. This file stays with the factory tree and imports nothing of it.
#
# The data directory holds, besides the charger's own files:
#   fw/a/, fw/b/         two slots, each a whole compiled tree (evse/, lib/, ...) with a
#                        fw/<slot>/slot.json written last: no slot.json, no slot
#   boot.json            {"active": "a"|"b"|"factory", "previous": ..., "trial": bool,
#                         "tries": n, "version": ..., "rolled_back": version or null}
# "factory" is the tree main.py was started from; it is never written by an upgrade, so
# there is always a version to fall back on.
#
# A new version boots on trial: select() counts the boot in boot.json *before* running
# it; evse/ota.py clears "trial" once the new version has been healthy for
# ota.HEALTH_MS. A boot that finds trial set with tries >= MAX_TRIES means the new
# version died, hung or lost power before it proved healthy: select() switches back to
# "previous" (or the factory tree when that slot is gone) and records "rolled_back".
import json
import os
import sys

MAX_TRIES = 1
SLOTS = ("a", "b")
FACTORY = "factory"
RUNNING = FACTORY  # the slot this boot runs, set by select()
STATE = None  # boot.json as select() left it


def default_data_dir(platform=sys.platform, stat=os.stat):
    """./data on the unix port; /data on the ESP32, whose filesystem is mounted at the
    root; /flash/data on the STM32, whose root holds only mount points (/flash, /sd)."""
    if platform == "linux":
        return "./data"
    try:
        stat("/flash")
    except OSError:
        return "/data"
    return "/flash/data"


def slot_dir(data_dir, slot):
    return data_dir + "/fw/" + slot


def slot_info(data_dir, slot):
    """The slot's slot.json as a dict, or None when the slot is missing or incomplete."""
    if slot not in SLOTS:
        return None
    try:
        with open(slot_dir(data_dir, slot) + "/slot.json") as f:
            info = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("complete") else None


def _valid(st):
    return (
        isinstance(st, dict)
        and st.get("active") in SLOTS + (FACTORY,)
        and isinstance(st.get("tries", 0), int)
    )


def load(data_dir):
    """boot.json: the first valid of boot.json, .bak, .tmp (the write order of save())."""
    p = data_dir + "/boot.json"
    for name in (p, p + ".bak", p + ".tmp"):
        try:
            with open(name) as f:
                st = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if _valid(st):
            return st
    return {"active": FACTORY, "previous": None, "trial": False, "tries": 0}


def save(data_dir, st):
    """Writes boot.json so that a power cut leaves the old or the new state (the same
    three-name scheme as lib/atomicfile.py, without importing it: lib/ is in a slot)."""
    p = data_dir + "/boot.json"
    with open(p + ".tmp", "w") as f:
        f.write(json.dumps(st))
        f.flush()
    try:
        os.stat(p)
        try:
            os.remove(p + ".bak")
        except OSError:
            pass
        os.rename(p, p + ".bak")
    except OSError:
        pass
    os.rename(p + ".tmp", p)


def decide(data_dir):
    """The slot to run this boot; updates boot.json (trial count, rollback) first."""
    st = load(data_dir)
    active = st.get("active")
    if active != FACTORY and slot_info(data_dir, active) is None:
        # The active slot is damaged: the previous one if it is whole, else the factory.
        prev = st.get("previous")
        st = {
            "active": prev if slot_info(data_dir, prev) else FACTORY,
            "previous": None,
            "trial": False,
            "tries": 0,
            "rolled_back": st.get("version"),
        }
        save(data_dir, st)
    elif st.get("trial"):
        if st.get("tries", 0) >= MAX_TRIES:
            prev = st.get("previous")
            back = prev if (prev == FACTORY or slot_info(data_dir, prev)) else FACTORY
            st = {
                "active": back,
                "previous": active,
                "trial": False,
                "tries": 0,
                "version": (slot_info(data_dir, back) or {}).get("version"),
                "rolled_back": st.get("version"),
            }
        else:
            st["tries"] = st.get("tries", 0) + 1
        save(data_dir, st)
    return st


def confirm(data_dir):
    """The running version proved healthy: its trial ends, in boot.json and in STATE.
    Returns the state."""
    global STATE
    st = load(data_dir)
    if st.get("active") == RUNNING and st.get("trial"):
        st["trial"] = False
        st["tries"] = 0
        save(data_dir, st)
        STATE = st
    return st


def running():
    """What this boot runs, for the Upgrade page: the slot, whether it is on trial, the
    previous version and one rolled back from."""
    st = STATE or {}
    return {
        "slot": RUNNING,
        "trial": bool(st.get("trial")) and st.get("active") == RUNNING,
        "previous": st.get("previous"),
        "rolled_back": st.get("rolled_back"),
    }


def select(data_dir=None):
    """Chooses the slot and puts its tree first on sys.path; returns the slot name."""
    global RUNNING, STATE
    data_dir = data_dir or default_data_dir()
    try:
        st = decide(data_dir)
    except OSError as e:  # no data dir yet, read-only filesystem: run the factory tree
        print("ab_boot: %r: running the factory tree" % e)
        st = {"active": FACTORY, "trial": False, "tries": 0}
    STATE = st
    RUNNING = st["active"]
    if RUNNING != FACTORY:
        d = slot_dir(data_dir, RUNNING)
        sys.path.insert(0, d + "/lib")
        sys.path.insert(0, d)
    return RUNNING
