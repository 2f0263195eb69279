# Loads boards/<name>/board.py (with the shared boards/evplus_common/ modules) against the
# fake port modules of this directory and a `time` with 32-bit tick arithmetic, and puts
# sys.modules and sys.path back as they were afterwards: every module first imported
# during the load (the board's own, lib/ drivers bound to the fake time) goes again.
import sys

_HERE = __file__.rpartition("/")[0] or "."
_ROOT = _HERE + "/../.."
_FAKES = (("machine", "fake_machine"), ("esp32", "fake_esp32"), ("network", "fake_network"),
          ("pyb", "fake_pyb"), ("time", "fake_time"))
_REPLACED = [m for m, _ in _FAKES] + ["board", "pins"]
_SHARED = _ROOT + "/boards/evplus_common"


class Loaded:
    def __init__(self, name):
        self.name = name
        self._saved = {}
        self._before = ()
        self._paths = (_ROOT + "/boards/" + name, _SHARED)

    def __enter__(self):
        if _HERE not in sys.path:
            sys.path.append(_HERE)
        import fake_machine
        import fake_time

        # the fakes' real counterparts, and the unix_sim board a test may have loaded
        for mod in _REPLACED:
            self._saved[mod] = sys.modules.get(mod)
            if mod in sys.modules:
                del sys.modules[mod]
        self._before = tuple(sys.modules)
        for mod, fake in _FAKES:
            sys.modules[mod] = __import__(fake)
        fake_machine.reset_log()
        fake_time.set_us(-1)
        fake_time.set_ms(-1)
        for p in reversed(self._paths):
            sys.path.insert(0, p)
        self.board = __import__("board")
        self.machine = fake_machine
        self.time = fake_time
        self.pyb = sys.modules["pyb"]
        self.pyb.select(self.name)  # that MCU's timer clocks and CAN controller
        self.network = sys.modules["network"]
        return self

    def __exit__(self, *exc):
        for p in self._paths:
            sys.path.remove(p)
        for mod in [m for m in sys.modules if m not in self._before]:
            del sys.modules[mod]
        for mod in _REPLACED:
            if self._saved.get(mod) is not None:
                sys.modules[mod] = self._saved[mod]
        if _HERE in sys.path:
            sys.path.remove(_HERE)
        return False


def make(name, env, boot_us=-1):
    """(Loaded, hw) for board `name`; the caller calls Loaded.__exit__() when done.
    boot_us >= 0 pins ticks_us() to that value while the board is made."""
    ld = Loaded(name)
    ld.__enter__()
    ld.time.set_us(boot_us)
    try:
        hw = ld.board.make(env)
    except Exception:
        ld.__exit__()
        raise
    return ld, hw
