"""Runnable examples that show meshd carrying real traffic."""
