# EV PLUS charger firmware: entry point.
#
# Runs from the source tree (firmware/main.py next to lib/ and boards/) or from a built
# tree (main.py next to evse/ and lib/, as on the device). Picks the board, builds the
# application and runs its event loop.
import sys
import os


def _dir_of(path):
    d = path.rpartition("/")[0]
    return d or "."


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _board_name():
    name = os.getenv("EVSE_BOARD") if hasattr(os, "getenv") else None
    if name:
        return name
    return "unix_sim" if sys.platform == "linux" else None


def _setup_path():
    here = _dir_of(__file__)
    if _exists(here + "/../lib") and _exists(here + "/../boards"):
        # Source tree.
        board = _board_name() or "unix_sim"
        # evplus_common: the board code the two EV PLUS boards share (docs/hardware.md).
        paths = (here, here + "/../lib", here + "/../boards/" + board)
        if board != "unix_sim":
            paths += (here + "/../boards/evplus_common",)
        for p in paths:
            if p not in sys.path:
                sys.path.append(p)
    else:
        # Built tree: evse/ beside us, lib/ holds the drivers and the board modules.
        for p in (here, here + "/lib"):
            if p not in sys.path:
                sys.path.append(p)
        # A/B upgrades (docs/ota.md): the chosen slot's tree goes first on sys.path.
        import ab_boot

        ab_boot.select(os.getenv("EVSE_DATA_DIR") if hasattr(os, "getenv") else None)


def _env():
    if not hasattr(os, "getenv"):
        return {}
    env = {}
    for key in (
        "EVSE_DATA_DIR",
        "EVSE_HTTP_HOST",
        "EVSE_HTTP_PORT",
        "EVSE_SIM_PORT",
        "EVSE_RS485",
        "EVSE_CAN_PORT",
        "EVSE_LOG_LEVEL",
        "EVSE_SERIAL",
        "EVSE_SIM_TETHERED",
    ):
        v = os.getenv(key)
        if v is not None:
            env[key] = v
    return env


def main():
    try:
        import micropython

        micropython.alloc_emergency_exception_buf(100)
    except AttributeError:
        pass  # the unix port has a fixed emergency buffer
    _setup_path()
    import gc
    import board
    import log

    env = _env()
    if "EVSE_DATA_DIR" not in env:  # the one default, the one A/B selection used too
        import ab_boot

        env["EVSE_DATA_DIR"] = ab_boot.default_data_dir()
    if env.get("EVSE_LOG_LEVEL") == "debug":
        log.set_level(log.DEBUG)
    hw = board.make(env)
    from evse import app

    gc.collect()
    app.main(hw)


main()
