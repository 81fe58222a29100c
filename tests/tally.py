"""Counts of what the reliability tests tried; conftest prints them at the end of the run."""

from collections import Counter

TALLY: Counter = Counter()
