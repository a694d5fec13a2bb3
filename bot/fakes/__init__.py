"""Fake Slack and fake Polytomic servers on loopback, for tests, benchmarks and the demo."""
