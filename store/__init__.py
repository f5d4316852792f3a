"""Persistence: SQLModel tables, the async engine, migrations and the read-model writer."""
