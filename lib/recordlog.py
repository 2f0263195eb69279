# Bounded, power-safe append log of byte records (charge sessions, fault reports, queues).
#
# Files: `<dir>/<name>.<first seq, 10 digits>.log`, at most `segments` of them. Each holds
# up to ceil(max_records / (segments - 1)) records; when the newest is full the oldest
# file is deleted and a new one started, so the disk always holds the newest max_records
# records or more, and never more than `segments` full files. records() and count show
# exactly the newest max_records. The file name carries the sequence number of its first
# record, so numbering survives restarts, roll-off and clear() (an empty file keeps it).
#
# Record, little-endian, 12 + n bytes:
#   magic u16 0x4C52 ("RL") | length u16 n | seq u32 | payload n bytes | CRC-32 u32
# The CRC covers header and payload. Within a file the seqs are consecutive from the
# file's first seq.
#
# Why a record is either fully there or absent after a power cut at any instant:
# - A record is accepted only if its magic is right, its length is at most
#   max_record_bytes (a torn or flipped length is never followed blindly), its seq is
#   the next expected one, all 12 + n bytes are present and the CRC matches. Any proper
#   prefix of a record fails (short read), so a torn append reads as "absent".
# - Opening stops reading a file at its first bad record: nothing after a gap is trusted,
#   and nothing is appended after one.
# - Appends only add bytes after the last good record (mode "ab"); existing records are
#   never rewritten. Before appending, a file whose size is not the good end we know
#   (torn tail after a cut, or a failed write) is cut back to its good records: the port
#   has no truncate, so the good prefix is copied through a fixed buffer to `<file>.tmp`
#   and renamed over the file. A cut during the copy leaves the original, which is
#   repaired again at the next open; FAT's rename-over is remove-then-rename, and a cut
#   between leaves only the complete .tmp, which open adopts.
# - Roll-off deletes a whole oldest file, i.e. whole records; clear() first creates the
#   empty file carrying the next seq, then deletes older files oldest first, so a cut in
#   clear() leaves a newest-suffix of the records and the numbering intact.
# Keep max_record_bytes for an existing log: shrinking it makes longer records unreadable
# (and cut off, in the newest file). `discarded` counts the bytes cut off since open, for
# the caller to log.
import os
import struct
from array import array
from micropython import const
from crc import crc32

_MAGIC = const(0x4C52)
_HDR = const(8)  # magic, length, seq
_OVERHEAD = const(12)  # header + CRC
_MAX_LEN = const(65535)  # what the u16 length field can say
_SUFFIX = ".log"
# One read and copy buffer for every log, as large as the largest needs: each use is
# synchronous (records() yields a copy), and one buffer per log cost a board's heap
# 0.5 to 2 KB each (the charge sessions, the faults, the OCPP queue).
_mv = None


def _scratch(n):
    global _mv
    if _mv is None or len(_mv) < n:
        _mv = memoryview(bytearray(n))  # a smaller one left is garbage


class RecordLog:
    def __init__(self, dir, name, max_records, max_record_bytes, segments=2):
        if max_records < 1 or segments < 2 or not 0 < max_record_bytes <= _MAX_LEN:
            raise ValueError("bad log limits")
        self._dir = dir
        self._prefix = name + "."
        self.max_records = max_records
        self.max_record_bytes = max_record_bytes
        self._nseg = segments
        self._per_seg = (max_records + segments - 2) // (segments - 1)  # ceil division
        # Reused by every read: payload + CRC of the largest record (also the copy buffer).
        _scratch(max(max_record_bytes + 4, 256))
        self._hdr = bytearray(_HDR)
        self._crc = bytearray(4)
        self._segs = []  # [first seq, good records, good end offset], oldest first
        self._next = 1
        self.discarded = 0  # torn or corrupt bytes cut off the newest file since open
        self._open()

    # -- public -------------------------------------------------------------------------

    @property
    def last_seq(self):
        """Sequence number of the last record ever appended (0 if none)."""
        return self._next - 1

    @property
    def count(self):
        """Records visible through records(): at most max_records."""
        n = 0
        for s in self._segs:
            n += s[1]
        return min(n, self.max_records)

    def append(self, payload):
        """Appends bytes (or str) and returns its sequence number."""
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload)
        if n > self.max_record_bytes:
            raise ValueError("record of %d bytes over %d" % (n, self.max_record_bytes))
        seq = self._next
        seg = self._active(seq)
        path = self._path(seg[0])
        hdr = self._hdr
        struct.pack_into("<HHI", hdr, 0, _MAGIC, n, seq)
        struct.pack_into("<I", self._crc, 0, crc32(payload, crc32(hdr)))
        with open(path, "ab") as f:
            f.write(hdr)
            f.write(payload)
            f.write(self._crc)
            f.flush()
        seg[1] += 1
        seg[2] += _OVERHEAD + n
        self._next = seq + 1
        return seq

    def records(self, newest_first=True, limit=None):
        """Yields (seq, payload bytes) of the newest max_records records (or `limit`),
        skipping any damaged since open. No file stays open across a yield, so appending
        while iterating is safe."""
        segs = [s[:] for s in self._segs]  # appends during the iteration are not seen
        visible = self.count
        want = visible if limit is None else min(limit, visible)
        skip = 0
        if newest_first:
            segs.reverse()
        else:
            for s in segs:
                skip += s[1]
            skip -= visible  # oldest records beyond max_records stay hidden
        for first, n, _ in segs:
            if want <= 0:
                return
            if skip >= n:
                skip -= n
                continue
            path = self._path(first)
            offs = self._offsets(path, first, n)
            if newest_first:
                order = range(len(offs) - 1, -1, -1)
            else:
                order = range(skip, len(offs))
                skip = 0
            for i in order:
                if want <= 0:
                    return
                payload = self._read_at(path, offs[i], first + i)
                if payload is None:
                    continue  # damaged since open; its neighbours carry their own CRC
                want -= 1
                yield first + i, payload

    def clear(self):
        """Drops every record; numbering continues from last_seq."""
        seq = self._next
        open(self._path(seq), "wb").close()  # carries the next seq if we are cut below
        for s in self._segs:
            if s[0] != seq:
                self._remove(s[0])
        self._segs = [[seq, 0, 0]]

    # -- files --------------------------------------------------------------------------

    def _path(self, first):
        return "%s/%s%010d%s" % (self._dir, self._prefix, first, _SUFFIX)

    def _remove(self, first):
        try:
            os.remove(self._path(first))
        except OSError:
            pass  # already gone

    @staticmethod
    def _size(path):
        try:
            return os.stat(path)[6]
        except OSError:
            return 0  # "ab" creates it

    def _active(self, seq):
        # The segment the next record goes to, with no torn bytes at its end.
        segs = self._segs
        if segs:
            seg = segs[-1]
            path = self._path(seg[0])
            if self._size(path) != seg[2]:
                # A failed write left a torn tail, or the file changed under us: trust
                # only what a fresh scan accepts, then cut the rest off.
                seg[1], seg[2] = self._scan(seg[0])
                if self._size(path) != seg[2]:
                    self._cut(path, seg[2])
            if seg[1] < self._per_seg and seg[0] + seg[1] == seq:
                return seg
        # Roll: delete before creating, so the disk never holds more than `segments` files.
        while len(segs) >= self._nseg:
            self._remove(segs.pop(0)[0])
        seg = [seq, 0, 0]
        segs.append(seg)
        return seg

    def _open(self):
        try:
            os.mkdir(self._dir)
        except OSError:
            pass  # exists
        pre = self._prefix
        names = [n for n in os.listdir(self._dir) if n.startswith(pre)]
        firsts = []
        for n in names:
            if n.endswith(_SUFFIX + ".tmp"):
                base = n[:-4]
                if base in names:
                    os.remove("%s/%s" % (self._dir, n))  # cut during a copy: redo it
                    continue
                # Cut inside FAT's rename-over after the old file went: .tmp is complete.
                os.rename("%s/%s" % (self._dir, n), "%s/%s" % (self._dir, base))
                n = base
            if n.endswith(_SUFFIX):
                try:
                    firsts.append(int(n[len(pre) : -len(_SUFFIX)]))
                except ValueError:
                    pass  # not one of ours
        firsts.sort()
        while len(firsts) > self._nseg:  # a cut inside clear(): finish the roll-off
            self._remove(firsts.pop(0))
        for first in firsts:
            n, end = self._scan(first)
            self._segs.append([first, n, end])
        if self._segs:
            first, n, end = self._segs[-1]
            path = self._path(first)
            if self._size(path) != end:
                self._cut(path, end)
            self._next = first + n

    def _scan(self, first):
        # Reads the file's records in order; returns (good records, their end offset).
        n = end = 0
        try:
            f = open(self._path(first), "rb")
        except OSError:
            return 0, 0
        with f:
            while True:
                size = self._read_record(f, first + n)
                if size < 0:
                    return n, end
                n += 1
                end += _OVERHEAD + size

    def _read_record(self, f, seq):
        # Reads the record at f's position into _mv; returns its payload length, or -1
        # if it is torn, foreign or corrupt. The length is checked before it is used.
        hdr = self._hdr
        if f.readinto(hdr) != _HDR:
            return -1
        magic, n, s = struct.unpack_from("<HHI", hdr)
        if magic != _MAGIC or n > self.max_record_bytes or s != seq:
            return -1
        mv = _mv
        if f.readinto(mv[: n + 4]) != n + 4:
            return -1
        if struct.unpack_from("<I", mv, n)[0] != crc32(mv[:n], crc32(hdr)):
            return -1
        return n

    def _read_at(self, path, off, seq):
        try:
            with open(path, "rb") as f:
                f.seek(off)
                n = self._read_record(f, seq)
        except OSError:
            return None  # rolled off meanwhile
        return None if n < 0 else bytes(_mv[:n])

    def _offsets(self, path, first, n):
        # Start offset of each of the file's first n records, from their headers only.
        offs = array("I")
        hdr = self._hdr
        off = 0
        try:
            with open(path, "rb") as f:
                for i in range(n):
                    f.seek(off)
                    if f.readinto(hdr) != _HDR:
                        break
                    magic, size, s = struct.unpack_from("<HHI", hdr)
                    if magic != _MAGIC or size > self.max_record_bytes or s != first + i:
                        break
                    offs.append(off)
                    off += _OVERHEAD + size
        except OSError:
            pass  # rolled off meanwhile: yield what we have
        return offs

    def _cut(self, path, end):
        # No truncate on MicroPython: copy the good prefix to .tmp, rename it over.
        self.discarded += self._size(path) - end
        tmp = path + ".tmp"
        mv = _mv
        left = end
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while left:
                got = src.readinto(mv[: min(left, len(mv))])
                if not got:
                    break
                dst.write(mv[:got])
                left -= got
            dst.flush()
        os.rename(tmp, path)
