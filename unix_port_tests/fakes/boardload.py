# Loads boards/<name>/board.py against the fake port modules of this directory, and
# puts sys.modules and sys.path back as they were afterwards.
import sys

_HERE = __file__.rpartition("/")[0] or "."
_ROOT = _HERE + "/../.."
_FAKES = (("machine", "fake_machine"), ("esp32", "fake_esp32"), ("network", "fake_network"),
          ("neopixel", "fake_neopixel"), ("pyb", "fake_pyb"))
_OWN = ("board", "pins", "evp_parts")


class Loaded:
    def __init__(self, name):
        self.name = name
        self._saved = {}
        self._path = _ROOT + "/boards/" + name

    def __enter__(self):
        if _HERE not in sys.path:
            sys.path.append(_HERE)
        for mod in [m for m, _ in _FAKES] + list(_OWN):
            self._saved[mod] = sys.modules.get(mod)
            if mod in sys.modules:
                del sys.modules[mod]
        for mod, fake in _FAKES:
            sys.modules[mod] = __import__(fake)
        import fake_machine

        fake_machine.reset_log()
        sys.path.insert(0, self._path)
        self.board = __import__("board")
        self.machine = fake_machine
        self.pyb = sys.modules["pyb"]
        self.network = sys.modules["network"]
        return self

    def __exit__(self, *exc):
        sys.path.remove(self._path)
        for mod in [m for m, _ in _FAKES] + list(_OWN):
            if mod in sys.modules:
                del sys.modules[mod]
            if self._saved.get(mod) is not None:
                sys.modules[mod] = self._saved[mod]
        if _HERE in sys.path:
            sys.path.remove(_HERE)
        return False
