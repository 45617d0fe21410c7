"""The SecAgg+ neighbour graph over a round's n clients (indices 0..n-1, in an order the server
drew at random): each client masks with, and shares its secrets among, its neighbours only. With
n <= k + 1 the graph is complete (every other client: Bonawitz et al.'s protocol); otherwise it is
the k-regular circulant graph (k / 2 on each side around the ring), so a client's work and traffic
grow with k, not n."""

from __future__ import annotations


def neighbours(index: int, n: int, k: int) -> frozenset[int]:
    """The neighbours of ``index`` (never itself). ``k`` is even and >= 2."""
    if not 0 <= index < n:
        raise ValueError(f"index {index} is not in 0..{n - 1}")
    if n <= k + 1:
        return frozenset(j for j in range(n) if j != index)
    return frozenset((index + o) % n for o in range(-(k // 2), k // 2 + 1) if o)


def degree(n: int, k: int) -> int:
    return min(k, n - 1)
