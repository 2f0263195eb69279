# The master's share of a per-phase limit among the nodes (docs/load-balancing.md,
# "Allocation" points 3 and 4): who is admitted, and max-min fair water filling.
from evse.balance.codec import phases


def allocate(limit_a, nodes):
    """Shares a per-phase limit (3 floats) among nodes in priority order.

    nodes: list of (mask, min_a, cap_a); mask bits 0-2 = L1-L3 the node loads.
    Returns a list of amps: 0.0 for a node that waits (the first nodes in the order are
    admitted while every phase can give each admitted node its minimum), else between
    its min and its cap, shared max-min fairly. The sum on each phase never exceeds
    its limit; every value is a multiple of 0.5 A, rounded down."""
    n = len(nodes)
    out = [0.0] * n
    used = [0.0, 0.0, 0.0]
    admitted = []
    for i in range(n):
        mask, lo, cap = nodes[i]
        if cap < lo:
            continue
        ok = True
        for p in phases(mask):
            if used[p] + lo > limit_a[p] + 1e-9:
                ok = False
        if ok:
            for p in phases(mask):
                used[p] += lo
            out[i] = lo
            admitted.append(i)
    active = list(admitted)
    for _ in range(n + 1):  # each round freezes at least one node
        if not active:
            break
        k = [0, 0, 0]
        for i in active:
            for p in phases(nodes[i][0]):
                k[p] += 1
        step = None
        for i in active:
            mask, lo, cap = nodes[i]
            s = cap - out[i]
            for p in phases(mask):
                s = min(s, (limit_a[p] - used[p]) / k[p])
            if step is None or s < step:
                step = s
        step = max(step, 0.0)
        for i in active:
            out[i] += step
            for p in phases(nodes[i][0]):
                used[p] += step
        still = []
        for i in active:
            mask, lo, cap = nodes[i]
            full = out[i] >= cap - 1e-9
            for p in phases(mask):
                if used[p] >= limit_a[p] - 1e-9:
                    full = True
            if not full:
                still.append(i)
        if len(still) == len(active):
            break
        active = still
    for i in admitted:
        out[i] = int(out[i] * 2 + 1e-6) / 2
    return out

