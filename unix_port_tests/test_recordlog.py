# recordlog: append/iterate, roll-off, numbering across reopen, and damaged files: a
# record torn at every byte, a huge length field, bit flips, leftovers of a repair.
import os
from check import eq, true, raises, tmpdir
from recordlog import RecordLog

_NAME = "hist"


def _tmpdir():
    return tmpdir("rlog")


def _rmtree(d):
    for n in os.listdir(d):
        os.remove(d + "/" + n)
    os.rmdir(d)


def _files(d):
    names = [n for n in os.listdir(d) if n.startswith(_NAME + ".")]
    names.sort()
    return names


def _get(path):
    with open(path, "rb") as f:
        return f.read()


def _put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _payload(seq):
    # Length varies with seq so offsets differ from record to record.
    return b'{"no":%d,"pad":"%s"}' % (seq, b"x" * (seq % 7))


def _fill(log, n):
    for _ in range(n):
        log.append(_payload(log.last_seq + 1))


def _all(log, newest_first=False):
    return list(log.records(newest_first=newest_first))


def _expect(first, last):
    return [(s, _payload(s)) for s in range(first, last + 1)]


def test_append_and_iterate_both_ways():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 10, 64)
        eq((log.count, log.last_seq), (0, 0), "empty")
        eq(_all(log), [])
        eq(log.append(b"a"), 1)
        eq(log.append("b"), 2)  # str is stored as UTF-8
        eq(log.append(b""), 3)  # empty payloads are records too
        eq(_all(log), [(1, b"a"), (2, b"b"), (3, b"")])
        eq(list(log.records()), [(3, b""), (2, b"b"), (1, b"a")], "newest first by default")
        eq(list(log.records(limit=2)), [(3, b""), (2, b"b")], "limit")
        eq(list(log.records(newest_first=False, limit=1)), [(1, b"a")], "limit oldest")
        eq((log.count, log.last_seq), (3, 3))
        raises(ValueError, log.append, b"x" * 65)
        eq(log.last_seq, 3, "a refused record takes no number")
    finally:
        _rmtree(d)


def test_roll_off_keeps_newest_max_records():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 5, 32)
        _fill(log, 23)
        eq(log.count, 5)
        eq(_all(log), _expect(19, 23), "exactly the newest 5, oldest first")
        eq(list(log.records(limit=3)), _expect(21, 23)[::-1])
        true(len(_files(d)) <= 2, "at most two segment files")
        log = RecordLog(d, _NAME, 5, 32)
        eq(_all(log), _expect(19, 23), "same after reopen")
    finally:
        _rmtree(d)


def test_n_segments_bound_disk_and_keep_max_records():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 9, 32, segments=4)  # 3 records per file
        for i in range(40):
            _fill(log, 1)
            true(len(_files(d)) <= 4, "segment bound")
            eq(log.count, min(i + 1, 9))
        eq(_all(log), _expect(32, 40))
        size = 0
        for n in _files(d):
            size += os.stat(d + "/" + n)[6]
        true(size <= 4 * 3 * (12 + 32), "byte bound")
    finally:
        _rmtree(d)


def test_sequence_continues_across_reopen_and_clear():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 4, 32)
        _fill(log, 6)
        log = RecordLog(d, _NAME, 4, 32)
        eq(log.last_seq, 6)
        eq(log.append(_payload(7)), 7)
        log.clear()
        eq((log.count, log.last_seq), (0, 7), "clear keeps the numbering")
        eq(_all(log), [])
        log = RecordLog(d, _NAME, 4, 32)
        eq((log.count, log.last_seq), (0, 7), "an empty file carries the number over a restart")
        eq(log.append(_payload(8)), 8)
        eq(_all(RecordLog(d, _NAME, 4, 32)), _expect(8, 8))
    finally:
        _rmtree(d)


def test_other_logs_in_the_same_dir_are_separate():
    d = _tmpdir()
    try:
        a = RecordLog(d, _NAME, 4, 32)
        b = RecordLog(d, _NAME + "x", 4, 32)
        a.append(b"a")
        b.append(b"b")
        _put(d + "/" + _NAME + ".junk.log", b"not ours")
        eq(_all(RecordLog(d, _NAME, 4, 32)), [(1, b"a")])
        eq(_all(RecordLog(d, _NAME + "x", 4, 32)), [(1, b"b")])
    finally:
        _rmtree(d)


def test_torn_last_record_at_every_byte():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 8, 40)
        _fill(log, 3)
        seg = d + "/" + _files(d)[0]
        before = _get(seg)
        log.append(_payload(4))
        whole = _get(seg)
        for cut in range(len(before), len(whole)):
            _put(seg, whole[:cut])
            log = RecordLog(d, _NAME, 8, 40)
            eq(_all(log), _expect(1, 3), "cut at %d" % cut)
            eq(_get(seg), before, "torn tail removed (cut at %d)" % cut)
            eq(log.discarded, cut - len(before), "cut-off bytes counted")
            eq(log.append(_payload(4)), 4, "appends fine (cut at %d)" % cut)
            eq(_all(RecordLog(d, _NAME, 8, 40)), _expect(1, 4), "cut at %d" % cut)
            eq(_files(d), [_files(d)[0]], "no .tmp left")
    finally:
        _rmtree(d)


def test_torn_first_record_of_new_segment():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 2, 40)
        _fill(log, 3)  # segments [1,2] and [3]
        newest = d + "/" + _files(d)[-1]
        whole = _get(newest)
        for cut in range(len(whole)):
            _put(newest, whole[:cut])
            log = RecordLog(d, _NAME, 2, 40)
            eq(_all(log), _expect(1, 2), "cut at %d" % cut)
            eq(log.append(_payload(3)), 3)
    finally:
        _rmtree(d)


def test_huge_length_field_stops_the_scan():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 8, 40)
        _fill(log, 4)
        seg = d + "/" + _files(d)[0]
        data = bytearray(_get(seg))
        off = 0
        for s in range(1, 3):  # to the start of record 3
            off += 12 + len(_payload(s))
        data[off + 2] = 0xFF  # length 0xFFFF: far past the file and the cap
        data[off + 3] = 0xFF
        _put(seg, data)
        log = RecordLog(d, _NAME, 8, 40)
        eq(_all(log), _expect(1, 2), "records before the bad one")
        eq(log.last_seq, 2, "numbering goes on from the last good record")
        eq(log.append(b"next"), 3)
        eq(_all(RecordLog(d, _NAME, 8, 40))[-1], (3, b"next"))
    finally:
        _rmtree(d)


def test_length_over_the_cap_is_refused_even_with_a_good_crc():
    d = _tmpdir()
    try:
        big = RecordLog(d, _NAME, 8, 200)
        big.append(b"short")
        big.append(b"L" * 100)  # well formed, CRC right, but longer than the reader's cap
        big.append(b"after")
        eq(_all(RecordLog(d, _NAME, 8, 200))[1], (2, b"L" * 100), "readable with cap 200")
        small = RecordLog(d, _NAME, 8, 40)
        eq((small.count, small.last_seq), (1, 1), "cap 40 stops the scan before it")
        eq(_all(small), [(1, b"short")])
    finally:
        _rmtree(d)


def test_bit_flips_anywhere_in_a_record_are_caught():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 8, 40)
        _fill(log, 3)
        seg = d + "/" + _files(d)[0]
        good = _get(seg)
        start = 12 + len(_payload(1))  # record 2 from here to `end`
        end = start + 12 + len(_payload(2))
        for pos in range(start, end):
            for bit in (0, 7):
                data = bytearray(good)
                data[pos] ^= 1 << bit
                _put(seg, data)
                log = RecordLog(d, _NAME, 8, 40)
                eq(_all(log), _expect(1, 1), "flip at %d bit %d" % (pos, bit))
        _put(seg, good)
    finally:
        _rmtree(d)


def test_damage_after_open_is_caught_while_iterating():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 8, 40)
        _fill(log, 3)
        seg = d + "/" + _files(d)[0]
        data = bytearray(_get(seg))
        data[13] ^= 0x10  # inside the payload of record 1
        data[-5] ^= 0x10  # and of record 3
        _put(seg, data)
        eq(list(log.records()), [(2, _payload(2))], "newest first: damaged records skipped")
        eq(_all(log), [(2, _payload(2))], "oldest first: the same")
    finally:
        _rmtree(d)


def test_older_segment_damage_does_not_stop_newer_one():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 3, 40)
        _fill(log, 5)  # segments [1..3], [4, 5]
        old = d + "/" + _files(d)[0]
        data = bytearray(_get(old))
        data[13] ^= 0x01  # payload of record 1
        _put(old, data)
        log = RecordLog(d, _NAME, 3, 40)
        eq(_all(log), _expect(4, 5), "records after the gap in the old file are not trusted")
        eq(log.append(_payload(6)), 6)
    finally:
        _rmtree(d)


def test_leftovers_of_an_interrupted_repair():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 8, 40)
        _fill(log, 3)
        name = _files(d)[0]
        seg = d + "/" + name
        good = _get(seg)
        # Cut while copying: torn file and a partial .tmp beside it.
        _put(seg, good + b"RL\x05")
        _put(seg + ".tmp", good[:7])
        eq(_all(RecordLog(d, _NAME, 8, 40)), _expect(1, 3))
        eq(_files(d), [name], ".tmp dropped")
        eq(_get(seg), good)
        # Cut inside FAT's rename-over: the file is gone, the complete .tmp remains.
        os.rename(seg, seg + ".tmp")
        log = RecordLog(d, _NAME, 8, 40)
        eq(_all(log), _expect(1, 3), ".tmp adopted")
        eq(_files(d), [name])
        eq(log.append(_payload(4)), 4)
    finally:
        _rmtree(d)


def test_failed_write_leaves_no_gap():
    # A write that dies half way (disk full) leaves a torn tail in the live log: the next
    # append must not land behind it, where no reader would find it.
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 8, 40)
        _fill(log, 2)
        seg = d + "/" + _files(d)[0]
        with open(seg, "ab") as f:
            f.write(b"RL\x10\x00\x03\x00")
        eq(log.append(_payload(3)), 3)
        eq(_all(RecordLog(d, _NAME, 8, 40)), _expect(1, 3))
    finally:
        _rmtree(d)


def test_cut_inside_a_roll_off():
    # Roll-off deletes the oldest file, then creates the new one: cut in between.
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 3, 40)
        _fill(log, 6)  # segments [1..3], [4..6], both full
        os.remove(d + "/" + _files(d)[0])
        log = RecordLog(d, _NAME, 3, 40)
        eq((log.count, log.last_seq), (3, 6), "still max_records kept")
        eq(log.append(_payload(7)), 7)
        eq(_all(RecordLog(d, _NAME, 3, 40)), _expect(5, 7))
        eq(len(_files(d)), 2)
    finally:
        _rmtree(d)


def test_interrupted_clear_and_extra_segments():
    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 3, 40)
        _fill(log, 5)  # segments [1..3], [4, 5]
        _put("%s/%s.%010d.log" % (d, _NAME, 6), b"")  # clear() cut after its first step
        log = RecordLog(d, _NAME, 3, 40)
        eq(len(_files(d)), 2, "back to the segment bound")
        eq((log.last_seq, _all(log)), (5, _expect(4, 5)))
        eq(log.append(b"z"), 6)
    finally:
        _rmtree(d)


def test_bad_limits_refused():
    raises(ValueError, RecordLog, "/nonexistent", _NAME, 0, 10)
    raises(ValueError, RecordLog, "/nonexistent", _NAME, 10, 70000)
    raises(ValueError, RecordLog, "/nonexistent", _NAME, 10, 10, 1)


def test_iteration_memory_is_flat():
    # Reading 200 records of 200 bytes must not hold them all: peak heap stays near one record.
    import gc

    d = _tmpdir()
    try:
        log = RecordLog(d, _NAME, 200, 200)
        for i in range(200):
            log.append(b"%03d" % i + b"y" * 197)
        gc.collect()
        base = gc.mem_alloc()
        peak = 0
        n = 0
        for seq, p in log.records():
            n += 1
            gc.collect()
            peak = max(peak, gc.mem_alloc() - base)
        eq(n, 200)
        true(peak < 4096, "iteration heap %d bytes" % peak)
    finally:
        _rmtree(d)


def test_logs_share_one_read_buffer():
    # Every log reads through one buffer as large as the largest needs (a board's heap
    # held one per log): a second log of the same size adds far less than its records,
    # and logs of other sizes read right between each other's reads.
    import gc
    import recordlog

    d = _tmpdir()
    big = RecordLog(d, "big", 10, 2048)
    gc.collect()
    before = gc.mem_alloc()
    big2 = RecordLog(d, "big2", 10, 2048)
    gc.collect()
    true(gc.mem_alloc() - before < 1024, "a second 2 KB log: %d B" % (gc.mem_alloc() - before))
    small = RecordLog(d, _NAME, 10, 16)
    big.append(b"B" * 1500)
    small.append(b"s" * 16)
    big2.append(b"C" * 2048)
    for _ in range(2):
        eq([p for _, p in small.records()], [b"s" * 16])
        eq([p for _, p in big.records()], [b"B" * 1500])
        eq([p for _, p in big2.records()], [b"C" * 2048])
    recordlog._mv = None  # the runner's next modules get the heap back
    _rmtree(d)
