"""Alembic migrations. Run them with `roi migrate`; see app/schema.py."""
