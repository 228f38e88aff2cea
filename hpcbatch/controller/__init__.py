"""The controller: one asyncio process that owns the store, the host links and the API."""
