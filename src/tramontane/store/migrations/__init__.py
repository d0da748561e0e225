"""Alembic migrations for the store; `tramontane.store.migrate` runs them."""
