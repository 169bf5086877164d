"""Where the bridge keeps what it must not forget: SQLite or PostgreSQL, and the encryption."""
