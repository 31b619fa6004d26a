"""Helpers for tests, demos and benchmarks: throwaway PostgreSQL servers."""
