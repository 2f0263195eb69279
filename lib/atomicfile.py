# Power-safe replacement of small files (settings, keys, state), with a fallback chain.
#
# write_atomic(path, data) goes through three names: `path.tmp` (the new version while it
# is written), `path` (the current version) and `path.bak` (the previous version):
#
#   1. write `path.tmp`, flush, close      cut here: path is untouched; a torn .tmp is
#                                          never read before path
#   2. remove `path.bak`                   cut here: path (old) and .tmp (new) both good
#   3. rename `path` -> `path.bak`         cut here: path missing, .bak (old) good
#   4. rename `path.tmp` -> `path`         done: path new, .bak old, no .tmp
#
# Step 2 exists because FAT's rename onto an existing name is "remove, then rename"
# (extmod/vfs_fat.c): doing that removal ourselves, while `path` is still whole, means
# every rename below goes to a free name and there is always one complete copy on disk.
# littlefs and POSIX rename atomically, so on them the same steps are merely careful.
# If `path` is missing (first write, or a cut after step 3 last time) steps 2-3 are
# skipped, so the last good .bak is kept rather than thrown away.
#
# read_latest(path, validate) takes the first of path, .bak, .tmp that passes validate():
# after a cut at any step above it returns the old or the new version, never a torn one.
# A torn .tmp can only be reached when path and .bak are both missing or bad, and then
# validate() rejects it; that is why the JSON helpers put a CRC on what they write.
#
# load_json_copies(path) is for a record that may only grow between two writes (a set of
# latched trips): it returns every copy that may hold the newest state, so the caller can
# take their union. A whole .tmp is newer than `path` (a cut after step 1 or 2), and .bak
# stands in for `path` only when that is missing (a cut after step 3): the .bak next to a
# `path` is always the older version, and its union would bring back what was removed.
#
# finish_write(path) is for such a record at boot: before anything new is saved, it does
# the renames a cut write did not reach, so the next write (whose step 1 truncates .tmp)
# never destroys a whole .tmp that was the only copy of the newest state.
#
# On-disk format of save_json / load_json (load accepts both):
#   a) "#crc32 xxxxxxxx\n" + JSON text: 8 lower-case hex digits, CRC-32 of every byte
#      after that first newline. save_json always writes this form.
#   b) plain JSON text (UTF-8, optional BOM, any line endings), as an installer or a test
#      writes by hand. JSON cannot start with '#', so the forms never mix up. To hand-edit
#      a file written by save_json, delete its first line (or fix the CRC).
# MicroPython has no os.fsync; file.flush() is the commit: f_sync on FAT, lfs_file_sync
# on littlefs, fsync(2) on unix. A directory change (rename, remove) is committed by the
# filesystem driver itself.
import os
import json
from micropython import const
from crc import crc32

_ENOENT = const(2)
_MAX_BYTES = const(16384)  # default read cap: a settings file is far smaller
_HDR = b"#crc32 "
_HDR_LEN = const(16)  # "#crc32 " + 8 hex digits + "\n"


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def stored(path):
    """True when any copy of `path` is on flash (the file, or the .tmp or .bak a cut
    replacement leaves without it), readable or not."""
    return _exists(path) or _exists(path + ".tmp") or _exists(path + ".bak")


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass  # already gone


def write_atomic(path, data):
    """Replaces `path` with `data` (bytes or str) so a power cut leaves old or new."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()  # FAT: f_sync; littlefs: commit. close() would do it too; be explicit
    if _exists(path):
        bak = path + ".bak"
        _remove(bak)
        os.rename(path, bak)
    os.rename(tmp, path)


def finish_write(path, max_bytes=_MAX_BYTES):
    """Completes a write_atomic() a power cut interrupted after its .tmp was whole: the
    same renames (remove .bak, rename path -> .bak, rename .tmp -> path), so that no copy
    of the newest version is in the way of the next write, whose first step truncates
    .tmp. A torn .tmp (its CRC or JSON fails) is left alone. True when a .tmp was
    promoted. Only save_json files (a whole .tmp is one decode_json accepts)."""
    tmp = path + ".tmp"
    try:
        decode_json(_read_capped(tmp, max_bytes))
    except (OSError, ValueError):
        return False
    if _exists(path):
        bak = path + ".bak"
        _remove(bak)
        os.rename(path, bak)
    os.rename(tmp, path)
    return True


def _read_capped(p, max_bytes):
    # stat first: a corrupt directory entry could claim a huge size; don't allocate it.
    size = os.stat(p)[6]
    if size > max_bytes:
        raise ValueError("%d bytes, over the %d cap" % (size, max_bytes))
    with open(p, "rb") as f:
        return f.read(size)  # not the cap: a tiny file must not take a 16 KB block


def read_latest(path, validate, on_error=None, max_bytes=_MAX_BYTES):
    """Returns (data, source path) of the first of path, .bak, .tmp that validate(data)
    accepts (it raises ValueError otherwise); OSError(ENOENT) when none does.
    on_error(msg) hears of every bad file and of every fallback taken."""
    skipped = None  # first candidate passed over, for the fallback message
    for p in (path, path + ".bak", path + ".tmp"):
        try:
            data = _read_capped(p, max_bytes)
            validate(data)
        except OSError as e:
            if e.errno != _ENOENT and on_error:
                on_error("%s unreadable: %s" % (p, e))
            skipped = skipped or p
            continue
        except ValueError as e:
            if on_error:
                on_error("%s corrupt: %s" % (p, e))
            skipped = skipped or p
            continue
        if skipped and on_error:
            on_error("%s unusable, using %s" % (skipped, p))
        return data, p
    raise OSError(_ENOENT)


def encode_json(obj):
    """The bytes save_json writes: CRC header line, then compact JSON."""
    body = json.dumps(obj).encode()
    return b"#crc32 %08x\n" % crc32(body) + body


def decode_json(data):
    """Parses either accepted format; raises ValueError for a torn or corrupt file."""
    if not data:
        raise ValueError("empty")
    if data[:7] == _HDR:
        if len(data) < _HDR_LEN or data[15:16] != b"\n":
            raise ValueError("bad crc line")
        body = memoryview(data)[_HDR_LEN:]
        if int(data[7:15], 16) != crc32(body):  # int() raises ValueError on non-hex
            raise ValueError("crc mismatch")
        return json.loads(bytes(body))
    if data[:3] == b"\xef\xbb\xbf":  # BOM some editors put in front of UTF-8
        data = data[3:]
    return json.loads(data)  # ValueError on bad JSON, UnicodeError (a ValueError) on bad UTF-8


def read_json(path, max_bytes=_MAX_BYTES):
    """The JSON of `path` alone, none of its other copies: for a file whose previous
    version must not come back (a replaced password). OSError when it cannot be read
    (ENOENT: missing), ValueError when it is corrupt."""
    return decode_json(_read_capped(path, max_bytes))


def save_json(path, obj):
    """Writes obj as CRC-framed JSON through write_atomic."""
    write_atomic(path, encode_json(obj))


def load_json(path, default_factory=None, on_error=None, max_bytes=_MAX_BYTES):
    """Returns the newest valid JSON object of path/.bak/.tmp. When there is none, returns
    default_factory() if given (on_error is told when bad files existed), else raises
    OSError(ENOENT). When default_factory() gives a value (not None), a copy whose JSON
    is of another type (a `null` or a list where an object belongs) is corrupt too, so
    the next copy is tried rather than the caller falling back to its defaults."""
    box = [None]  # validate() keeps the parsed object: parse each file once
    want = default_factory() if default_factory is not None else None
    want = None if want is None else type(want)

    def validate(data):
        obj = decode_json(data)
        if want is not None and not isinstance(obj, want):
            raise ValueError("JSON of the wrong type")
        box[0] = obj

    errors = [0]

    def note(msg):
        errors[0] += 1
        if on_error:
            on_error(msg)

    try:
        read_latest(path, validate, note, max_bytes)
    except OSError as e:
        if e.errno != _ENOENT or default_factory is None:
            raise
        if errors[0] and on_error:
            on_error("%s: no valid copy, using defaults" % path)
        return default_factory()
    return box[0]


def load_dict_newest(path, max_bytes, note):
    """(object, suffix, newest) of the first copy of path that is a JSON object: the file
    itself, then a .tmp whose CRC proves it whole (a save cut after the old file became
    the .bak: the newer copy), then the older .bak, then a .tmp without a CRC. newest:
    the copy is the file or that proven .tmp. note(msg) hears of every copy that exists
    and cannot be used. (None, None, False) when no copy can."""
    for suffix, crc_only in (("", False), (".tmp", True), (".bak", False), (".tmp", False)):
        p = path + suffix
        try:
            data = _read_capped(p, max_bytes)
            if suffix == ".tmp" and crc_only != (data[:7] == _HDR):
                continue  # the .tmp goes in the pass its framing belongs to
            obj = decode_json(data)
            if not isinstance(obj, dict):
                raise ValueError("JSON of the wrong type")
        except OSError as e:
            if e.errno != _ENOENT and not crc_only:
                note("%s unreadable: %s" % (p, e))
            continue
        except ValueError as e:  # UnicodeError included
            note("%s corrupt: %s" % (p, e))
            continue
        return obj, suffix, suffix == "" or crc_only
    return None, None, False


def load_json_copies(path, on_error=None, max_bytes=_MAX_BYTES, want=None):
    """The parsed JSON of every copy of path that may hold its newest state: `path` (and
    `.bak` when `path` is missing or bad) and `.tmp`. A list, empty when there is no file
    at all. on_error(msg) hears of every copy that exists but cannot be read or parsed
    (a torn .tmp: a write was cut), and of a missing `path` whose other copies exist.
    want: a type; JSON of another type is a corrupt copy (as in load_json)."""
    out = []
    path_ok = True
    absent = False
    for p in (path, path + ".bak", path + ".tmp"):
        if p[-4:] == ".bak" and path_ok:
            continue  # path is whole: .bak is the version before it
        try:
            obj = decode_json(_read_capped(p, max_bytes))
            if want is not None and not isinstance(obj, want):
                raise ValueError("JSON of the wrong type")
            out.append(obj)
            continue
        except OSError as e:
            if e.errno != _ENOENT:
                if on_error:
                    on_error("%s unreadable: %s" % (p, e))
            elif p == path:
                absent = True
        except ValueError as e:
            if on_error:
                on_error("%s corrupt: %s" % (p, e))
        if p == path:
            path_ok = False
    if absent and on_error and (_exists(path + ".bak") or _exists(path + ".tmp")):
        on_error("%s missing, its other copies used" % path)
    return out
