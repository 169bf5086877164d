"""The web process: the aiohttp application, its lifecycle, metrics and logs."""
