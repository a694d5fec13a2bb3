"""polytomic-bot: cancel Polytomic bulk syncs from Slack and tell the story in a thread."""

__version__ = "0.1.0"
