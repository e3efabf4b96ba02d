"""The database schema's upgrades: Alembic migrations, run each time the store opens.

The tables are described by the ORM models of :mod:`usher.ctrl.tables`; how a database gets
there is the revisions in ``migrations/versions``, applied in order up to the newest
(``head``) and recorded in the database's ``alembic_version`` table. The first, the
baseline, also brings up to date a database made by a release from before Alembic (one
without ``alembic_version``). A change to the models comes with a new revision, made from
the template ``migrations/script.py.mako``, for instance::

    python -c 'from alembic import command; from usher.ctrl.store.schema import config;
    command.revision(config(), "what changes")'
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic's own INFO lines (its dialect, its plugins, each comparison) tell an administrator
# nothing at every start; each revision applied is logged by ``migrations/env.py`` instead.
logging.getLogger("alembic").setLevel(logging.WARNING)


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for Usher's migrations, on ``connection`` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: Connection) -> None:
    """Bring the database on ``connection`` to the newest schema, in its transaction (for
    :meth:`AsyncConnection.run_sync <sqlalchemy.ext.asyncio.AsyncConnection.run_sync>`)."""
    command.upgrade(config(connection), "head")
