"""Where the bridge keeps what it must not forget: the SQLite store and its encryption."""
