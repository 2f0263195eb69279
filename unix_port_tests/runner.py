# Test runner for the MicroPython unix port.
#
#   micropython unix_port_tests/runner.py [test_module ...]
#   micropython unix_port_tests/runner.py -test_invariants    # every module but that one
#
# Runs every `test_*` function of every `unix_port_tests/test_*.py` module (or only the
# named ones) inside this interpreter, prints one line per test, the traceback of each
# failure, and a closing "N passed, N failed" line; exits with the number of failures so
# `make test` stops on any of them. A test that cannot run on this port raises
# `SkipTest` and counts as skipped.
#
# micropython-lib's unittest is not published on PyPI (the only registry our build may
# fetch from), so this ~80-line runner stands in for unittest-discover.
import sys
import os

_HERE = __file__.rpartition("/")[0] or "."
_ROOT = _HERE + "/.."


def _setup_path():
    for p in (_HERE, _ROOT + "/firmware", _ROOT + "/lib", _ROOT + "/boards/unix_sim"):
        if p not in sys.path:
            sys.path.append(p)


def _modules(argv):
    """The named modules, or every module but those named with a leading '-'."""
    wanted = [a.rpartition("/")[2].replace(".py", "") for a in argv if not a.startswith("-")]
    if wanted:
        return wanted
    skip = [a[1:].replace(".py", "") for a in argv if a.startswith("-")]
    names = [n[:-3] for n in os.listdir(_HERE) if n.startswith("test_") and n.endswith(".py")]
    names = [n for n in names if n not in skip]
    names.sort()
    return names


# MicroPython interns every name it compiles into pools that double and are never
# freed. The whole run needs about 10 200 names beyond the built-in ones, just past the
# ninth pool (5 120 entries): the tenth (10 240 entries, 120 KB on this port) must be one
# block, and late in the run the modules before have cut the heap into pieces of 30 KB at
# most (1 MB free in all). A block that size is kept from the start, and given up for the
# import that needs it. Interning the names early instead (compiling every source first)
# slowed every string the tests make: MicroPython looks each one up among all names.
_RESERVE = 160 * 1024


def _import(modname, reserve):
    """The test module; on a MemoryError, once more after the reserve is given back."""
    try:
        return __import__(modname)
    except MemoryError:
        if not reserve:
            raise
    reserve.pop()
    import gc

    gc.collect()
    return __import__(modname)


def run(argv):
    _setup_path()
    from check import SkipTest
    import log

    reserve = [bytearray(_RESERVE)] if len(_modules(argv)) > 1 else []
    passed = failed = skipped = 0
    for modname in _modules(argv):
        log.set_level(log.WARNING)  # the modules' INFO lines would bury the results
        try:
            mod = _import(modname, reserve)
        except Exception as e:
            failed += 1
            print("FAIL %s (import)" % modname)
            sys.print_exception(e)
            continue
        tests = [n for n in dir(mod) if n.startswith("test_")]
        tests.sort()
        for name in tests:
            fn = getattr(mod, name)
            if not callable(fn):
                continue
            try:
                fn()
            except SkipTest as e:
                skipped += 1
                print("SKIP %s.%s: %s" % (modname, name, e))
                continue
            except Exception as e:
                failed += 1
                print("FAIL %s.%s" % (modname, name))
                sys.print_exception(e)
                continue
            passed += 1
            print("ok   %s.%s" % (modname, name))
        # Each module's objects go before the next module runs: heap checks stay honest.
        del sys.modules[modname]
        import gc

        gc.collect()
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    return failed


if __name__ == "__main__":
    sys.exit(min(run(sys.argv[1:]), 100))
