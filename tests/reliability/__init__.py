"""Reliability and safety tests: injected faults, hostile files, fuzzing (issue 8)."""
