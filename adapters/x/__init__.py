"""The edge to X: API v2 client, OAuth 2.0 with PKCE."""
