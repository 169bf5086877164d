"""Operator tools: the xdm-bridge CLI, doctor, admin commands."""
