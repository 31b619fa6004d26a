"""Every SQL statement that changes user schema or data, composed with psycopg.sql."""
