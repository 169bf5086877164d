"""The edge to Slack: Web API client, Bolt listeners, scopes."""
