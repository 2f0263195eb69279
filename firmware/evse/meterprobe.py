# Looks for a supported meter on the RS-485 bus (meter_model "auto", or a configured
# meter that stopped answering), one exchange set per power cycle so that the bus and
# the power task stay on their 1 s grid.
#
# A candidate is a (model, address) pair: the built-in models (SDM72 reads as SDM630,
# the same registers) at the addresses 1..ADDRS, the factory address 1 of every model
# first. A candidate is a meter there when its whole map reads without an error and
# the values are a meter's (meters.plausible: a mains voltage on L1 where the map has
# one, currents that are numbers and not beyond any house's). Registers of another make answer with an
# exception, or with values that fail that test (an integer read as a float is tiny).
# Only reads are sent, never the configured meter's own read (its address with a model
# reading the same registers). A sweep
# tries every candidate; its result is a meter only when one address answered as one.
from micropython import const

from evse import meters

MODELS = ("SDM630", "SDM120", "ABB_B23", "EM340", "DTSU666")
ADDRS = const(10)  # addresses 1..10: installers keep 1 or number a few meters
PAUSE_MS = const(30000)  # between two sweeps that found nothing
# Models reading the same registers (SDM120's are a subset of SDM630's, SDM72 is read as
# SDM630): at the configured address, such a candidate is the configured read again.
_EASTRON = ("SDM630", "SDM72", "SDM120")


class Probe:
    """One sweep over the candidates at a time: `step()` tries the next one. A sweep
    finds a meter only when exactly one address answers as one: with two (the grid's
    and, say, the charger's own billing meter) the first is not necessarily the grid's,
    and one that sees no other load would let the supply be overloaded."""

    def __init__(self):
        self.found = None  # (model, address) of the one meter of the last sweep
        self.meters = []  # (model, address) of every meter of the last finished sweep
        self.tried = 0  # candidates tried in this sweep
        self.sweeps = 0  # sweeps finished
        self.searching = False
        self._next = 0
        self._hits = []  # the meters of this sweep so far
        self._vals = [None] * meters.N_QTY

    @staticmethod
    def count():
        return len(MODELS) * ADDRS

    def candidate(self, k):
        """The k-th candidate: address 1 of every model first, then address 2, ..."""
        return MODELS[k % len(MODELS)], 1 + k // len(MODELS)

    def restart(self):
        self._next = 0
        self.tried = 0
        self._hits = []
        self.searching = True

    async def step(self, master, skip=None):
        """Tries the next candidate (not `skip`, a (model, address) in use, nor an
        address already found) with `master` (lib/modbus_rtu); -> (model, address) at
        the end of a sweep in which one address answered as a meter, else None."""
        if not self.searching:
            return None
        k = self._next
        self._next += 1
        self.tried = self._next
        model, addr = self.candidate(k)
        own = skip is not None and addr == skip[1] and (
            model == skip[0] or (model in _EASTRON and skip[0] in _EASTRON))
        if not own and not any(a == addr for _m, a in self._hits):
            if await self._is_meter(master, model, addr):
                self._hits.append((model, addr))
        if self._next < self.count():
            return None
        self.searching = False
        self.sweeps += 1
        self.meters = self._hits
        self.found = self.meters[0] if len(self.meters) == 1 else None
        return self.found

    async def _is_meter(self, master, model, addr):
        import modbus_rtu as mb

        m = meters.builtin(model)
        vals = self._vals
        for i in range(meters.N_QTY):
            vals[i] = None
        try:
            for i in range(len(m.blocks)):
                fc, start, count, _ = m.blocks[i]
                m.decode(i, await master.read_registers(fc, addr, start, count), vals)
        except mb.ModbusError:
            return False  # no answer, an exception, a bad frame: not this one
        return meters.plausible(m, vals)

    def view(self, state):
        f = self.found
        return {
            "state": state,
            "found": {"model": f[0], "addr": f[1]} if f else None,
            "meters": [{"model": m, "addr": a} for m, a in self.meters],
            "tried": self.tried,
            "of": self.count(),
            "sweeps": self.sweeps,
        }
