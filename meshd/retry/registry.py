"""The retry plug-in families in one place for the config loader: kind -> config class, and defaults.

`service.responseClassifier` picks from `CLASSIFIERS`, `service.retries.backoff` from `BACKOFFS`;
`service.retries.budget` is a plain `RetryBudgetConfig` (no kinds). The dict literals live next to
their classes (`classifiers.py`, `backoff.py`); this module only gathers them.

meshd's defaults differ from linkerd's on purpose (docs/retries.md says why): the classifier is
`retryableIdempotent5XX` (linkerd: `nonRetryable5XX`) and the backoff is `jittered` 10..1000 ms
(linkerd: constant 0).
"""

from __future__ import annotations

from typing import Final

from meshd.retry.backoff import BACKOFFS, BackoffConfig, RetryJitteredBackoffConfig
from meshd.retry.budget_config import RetryBudgetConfig
from meshd.retry.classifiers import CLASSIFIERS, ResponseClassifierConfig, RetryableIdempotent5XXConfig

__all__ = [
    "BACKOFFS",
    "CLASSIFIERS",
    "DEFAULT_BACKOFF",
    "DEFAULT_BUDGET",
    "DEFAULT_RESPONSE_CLASSIFIER",
]

DEFAULT_RESPONSE_CLASSIFIER: Final[ResponseClassifierConfig] = RetryableIdempotent5XXConfig()
DEFAULT_BACKOFF: Final[BackoffConfig] = RetryJitteredBackoffConfig()
DEFAULT_BUDGET: Final = RetryBudgetConfig()
