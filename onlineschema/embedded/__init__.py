"""Throwaway PostgreSQL servers (the ``embedded`` extra): the demo, benchmarks and tests."""
