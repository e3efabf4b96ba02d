"""Alembic's environment: the migrations run on the connection the store opens, inside its
transaction (``usher.ctrl.store.schema.upgrade`` passes it in ``config.attributes``)."""

from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
