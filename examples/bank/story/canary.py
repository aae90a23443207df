"""The canary rollout of accounts-v2: the routes.yaml for each step, and how close a measured split must be.

A step sends a share of `/svc/accounts` to `/#/fs/accounts-v2` with a weighted union in the operators' routes
file, which meshd hot-reloads. meshd picks a branch per request at random with the given weights, so the
measured share of n requests is binomial: its standard error is sqrt(p(1-p)/n). The check therefore accepts
the wider of two bounds: the +-2 % the rollout plan promises, and a two-sided 99.9 % binomial interval
(z = 3.29) for the number of requests actually measured. With a few thousand requests per step the first bound
is the binding one; on a short demo run the second keeps the check honest instead of flaky. Steps at 0 % and
100 % have no randomness and must be within the 2 % (which leaves room only for requests in flight across the
reload).
"""

from __future__ import annotations

import math
from typing import Final

import yaml

CANARY_STEPS: Final[tuple[float, ...]] = (0.05, 0.5, 1.0, 0.0)
"""v2's share at each step: 5 %, 50 %, 100 %, then the rollback to 0 %."""

PROMISED_TOLERANCE: Final = 0.02
Z_999: Final = 3.29


def routes_document(v2_share: float) -> str:
    """routes.yaml sending `v2_share` of accounts traffic to accounts-v2."""
    if not 0.0 <= v2_share <= 1.0:
        raise ValueError(f"v2_share must be between 0 and 1, got {v2_share}")
    if v2_share == 0.0:
        tree = "/#/fs/accounts"
    elif v2_share == 1.0:
        tree = "/#/fs/accounts-v2"
    else:
        tree = f"{_weight(1.0 - v2_share)} * /#/fs/accounts & {_weight(v2_share)} * /#/fs/accounts-v2"
    return yaml.safe_dump({"dtab": f"/svc/accounts => {tree};"}, sort_keys=False)


def canary_tolerance(expected_share: float, requests: int) -> float:
    """How far the measured share may be from `expected_share` after `requests` requests (see module doc)."""
    if requests <= 0:
        return math.inf
    if expected_share in (0.0, 1.0):
        return PROMISED_TOLERANCE
    standard_error = math.sqrt(expected_share * (1.0 - expected_share) / requests)
    return max(PROMISED_TOLERANCE, Z_999 * standard_error)


def _weight(share: float) -> str:
    return f"{round(share, 6):g}"
