"""Pure retry machinery: budget, backoff schedules, response classifiers and deadlines (no I/O).

The retry stage (`meshd/pipeline/retries.py`) and the timeout stage use these; docs/retries.md
explains the behaviour for operators.
"""
