"""Alembic's environment: the migrations run on the connection the store opens, inside its
transaction (``usher.ctrl.store.schema.upgrade`` passes it in ``config.attributes``)."""

import logging
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationInfo

log = logging.getLogger("usher.store")


def _applied(*, step: MigrationInfo, **_: Any) -> None:
    revision = step.up_revision
    log.info("database schema upgraded to revision %s: %s", revision.revision, revision.doc)


context.configure(connection=context.config.attributes["connection"], on_version_apply=_applied)
with context.begin_transaction():
    context.run_migrations()
