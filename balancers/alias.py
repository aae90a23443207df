"""Drawing P2C's two distinct candidates in O(1): uniformly, or in proportion to weights.

Uniform (Finagle `P2CPick`): `a = rand(n)`, `b = rand(n - 1)`, and `b += 1` if `b >= a`, which
gives two distinct indices, every ordered pair equally likely.

Weighted: Vose's alias method, built in O(n) once per update, samples an index with
probability weight/total from one random number. The second candidate is drawn the same way
until it differs from the first (at most 3 tries, as Finagle's weighted aperture retries its
second pick); if the first candidate holds nearly all the weight and every try hits it, the
second is taken uniformly among the others so the pair stays distinct and the pick O(1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["AliasTable", "draw_pair"]

_SECOND_TRIES: Final = 3

Uniform = Callable[[], float]
"""`random.Random.random`: a float in [0, 1)."""


def draw_pair(random: Uniform, n: int) -> tuple[int, int]:
    """Two distinct indices in range(n), uniformly; n must be at least 2."""
    a = int(random() * n)
    if a >= n:  # random() * n can round up to n for some n
        a = n - 1
    b = int(random() * (n - 1))
    if b >= n - 1:
        b = n - 2
    if b >= a:
        b += 1
    return a, b


class AliasTable:
    """Samples index i with probability weights[i] / sum(weights) in O(1)."""

    __slots__ = ("_n", "_prob", "_alias")

    def __init__(self, weights: Sequence[float]) -> None:
        n = len(weights)
        if n == 0:
            raise ValueError("no weights")
        total = float(sum(weights))
        if not total > 0.0:
            raise ValueError("weights must sum to a positive number")
        scaled = [w * n / total for w in weights]
        prob = [1.0] * n
        alias = list(range(n))
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            s = small.pop()
            g = large.pop()
            prob[s] = scaled[s]
            alias[s] = g
            scaled[g] = (scaled[g] + scaled[s]) - 1.0
            if scaled[g] < 1.0:
                small.append(g)
            else:
                large.append(g)
        # Leftovers are 1.0 up to rounding: they keep prob 1 and alias themselves.
        self._n = n
        self._prob = prob
        self._alias = alias

    def __len__(self) -> int:
        return self._n

    def sample(self, random: Uniform) -> int:
        n = self._n
        u = random() * n
        i = int(u)
        if i >= n:
            i = n - 1
        return i if u - i < self._prob[i] else self._alias[i]

    def pair(self, random: Uniform) -> tuple[int, int]:
        """Two distinct indices, each drawn by weight (see the module docstring); n >= 2."""
        a = self.sample(random)
        for _ in range(_SECOND_TRIES):
            b = self.sample(random)
            if b != a:
                return a, b
        n = self._n
        b = int(random() * (n - 1))
        if b >= n - 1:
            b = n - 2
        if b >= a:
            b += 1
        return a, b
