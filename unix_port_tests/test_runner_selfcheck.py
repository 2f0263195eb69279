# The runner and its helpers work: a failing check raises, heap_lock catches allocation.
from check import eq, raises, assert_no_alloc


def test_eq_raises_on_mismatch():
    raises(AssertionError, eq, 1, 2)


def test_no_alloc_catches_allocation():
    def alloc():
        return [1, 2, 3]

    raises(MemoryError, assert_no_alloc, alloc)
