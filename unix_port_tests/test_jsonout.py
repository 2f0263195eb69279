# JSON written in pieces through a fixed buffer (lib/jsonout): the bytes of json.dumps.
import asyncio
import json

import jsonout
from check import eq, true

_SAMPLES = [
    {"a": [1, 2, "x"], "b": None, "c": 1.5, "d": "\u00e9\n\"\\", "e": {"x": [True, False]}},
    [{"no": 3, "power_dkw": [1, 2, 3]}, {}, [], "\x01\u2028"],
    {"s": "y" * 700, "n": [{"k": "z" * 300}] * 3},
    {}, [], 0.1, -3, "plain",
]


class _Sink:
    def __init__(self):
        self.data = bytearray()
        self.calls = 0

    def __call__(self, mv):
        self.data.extend(mv)
        self.calls += 1


def _written(obj, buf=64):
    sink = _Sink()
    out = jsonout.Chunks(bytearray(buf))
    out.reset(sink)
    pauses = []

    async def pause():
        out.flush()
        out.dirty = False
        pauses.append(1)

    asyncio.run(jsonout.write(obj, out, pause))
    out.flush()
    return bytes(sink.data), len(pauses)


def test_same_bytes_as_dumps():
    for obj in _SAMPLES:
        want = json.dumps(obj).encode()
        eq(jsonout.size(obj), len(want), "size of %r" % (want[:40],))
        got, _ = _written(obj)
        eq(got, want, "written %r" % (want[:40],))
        sink = _Sink()
        out = jsonout.Chunks(bytearray(16), sink)
        json.dump(obj, out)
        out.flush()
        eq(bytes(sink.data), want, "json.dump through 16 bytes")


def test_large_body_pauses_between_items():
    obj = {"sessions": [{"no": i, "id": "x" * 40} for i in range(50)]}
    got, pauses = _written(obj, 128)
    eq(got, json.dumps(obj).encode(), "bytes")
    true(pauses > 10, "the socket may drain between items (%d pauses)" % pauses)


class _Recs(jsonout.Lazy):
    def __init__(self, first, then):
        super().__init__()
        self._first = first
        self._then = then

    def items(self, counting):
        for r in self._first if counting else self._then:
            yield r


def test_lazy_list_keeps_the_announced_length():
    recs = [{"no": i, "id": "card%d" % i} for i in range(5)]
    lazy = _Recs(recs, recs)
    obj = {"sessions": lazy}
    n = jsonout.size(obj)
    eq(n, len(json.dumps({"sessions": recs})), "counted like a list")
    got, _ = _written(obj)
    eq(got, json.dumps({"sessions": recs}).encode(), "same bytes")
    # one item gone between the count and the send: blanks, still valid JSON
    gone = _Recs(recs, recs[:2] + recs[3:])
    n = jsonout.size({"sessions": gone})
    got, _ = _written({"sessions": gone})
    eq(len(got), n, "announced length kept")
    eq(json.loads(got), {"sessions": recs[:2] + recs[3:]}, "valid JSON without it")
