"""Apply Alembic migrations: `python -m store.migrate` (to head); `make run` and tests use it."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from store.db import sync_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def main() -> None:
    from config import get_settings

    settings = get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    upgrade(url, sys.argv[1] if len(sys.argv) > 1 else "head")


if __name__ == "__main__":
    main()
