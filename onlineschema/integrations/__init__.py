"""Integrations with migration frameworks."""
