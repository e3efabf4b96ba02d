"""The controller's state store: everything it must not forget, through SQLAlchemy.

SQLite (one file in the state dir) by default, PostgreSQL when the config gives a
``postgresql://`` URL; pydantic models of :mod:`usher.model` in and out. The pieces:

- ``facade``: :class:`Store`, the one object the controller holds, offering every
  repository's methods as its own;
- ``database``: the engine, sessions and the write transaction;
- ``schema`` and ``migrations/``: the schema's upgrades, by Alembic, when the store opens;
  ``quarantine``: rows that do not read back, moved aside at open;
- ``batcher``: small concurrent writes coalesced into one transaction;
- ``derived``: what the store keeps in memory of the VM records it commits;
- one repository per table: ``vms`` (and ``vm_pages``, its listings), ``nodes``,
  ``operations``, ``events``, ``tokens``, ``plugin_data``; ``rows``, what they share.
"""

from usher.ctrl.store.facade import Store
from usher.ctrl.store.plugin_data import PluginData
from usher.ctrl.store.tokens import LastCredential

__all__ = ["LastCredential", "PluginData", "Store"]
