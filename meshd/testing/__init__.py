"""Test support shared by tests, examples and bench: fake clock, upstream servers, waiting helpers."""
