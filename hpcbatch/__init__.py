"""hpcbatch: an asyncio cluster manager for hosts reached over SSH."""

__version__ = "0.1.0"
