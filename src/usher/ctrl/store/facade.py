"""``Store``: the one object the controller holds for its database, table by table."""

from __future__ import annotations

from sqlalchemy import select

from usher.ctrl.store import schema
from usher.ctrl.store.batcher import WriteBatcher
from usher.ctrl.store.database import Database
from usher.ctrl.store.derived import DerivedViews
from usher.ctrl.store.events import Events
from usher.ctrl.store.nodes import Nodes
from usher.ctrl.store.operations import Operations
from usher.ctrl.store.plugin_data import PluginValues
from usher.ctrl.store.quarantine import Quarantined, sweep
from usher.ctrl.store.tokens import Tokens
from usher.ctrl.store.vm_pages import VMPages
from usher.ctrl.store.vms import VMs
from usher.ctrl.tables import VMRow

_VMS = VMRow.__table__
# what the views kept in memory are built from when the store opens
_LOADED = select(
    _VMS.c.seq,
    _VMS.c.id,
    _VMS.c.node,
    _VMS.c.target_node,
    _VMS.c.state,
    _VMS.c.cluster,
    _VMS.c.spec,
)


class Store:
    """Everything the controller must not forget: one repository per table, whose methods
    it offers as its own (``store.get_vm`` is ``store.vms.get_vm``), pydantic models in and
    out. :meth:`open` brings the schema up to date before anything else."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.url, self.is_sqlite = self.db.url, self.db.is_sqlite
        self.engine, self.sessions = self.db.engine, self.db.sessions
        self.derived = DerivedViews()
        # what the committed VM records reserve per node, for the scheduler; node records
        # that change are marked in the same log by the node registry
        self.changes, self.reservations = self.derived.changes, self.derived.reservations
        self.batcher = WriteBatcher(self.db, self.derived)
        self.flush = self.batcher.flush

        self.vms = VMs(self.db, self.batcher, self.derived)
        self.add_vms, self.update_vms = self.vms.add_vms, self.vms.update_vms
        self.update_vm, self.delete_vm = self.vms.update_vm, self.vms.delete_vm
        self.was_destroyed, self.get_vm = self.vms.was_destroyed, self.vms.get_vm
        self.get_vms, self.resolve_vms = self.vms.get_vms, self.vms.resolve_vms
        self.count_vms, self.vms_where = self.vms.count_vms, self.vms.vms_where
        self.vms_on = self.vms.vms_on
        self.names_with_prefix = self.vms.names_with_prefix
        self.names_taken = self.vms.names_taken

        self.vm_pages = VMPages(self.db, self.derived.listing)
        self.list_vms, self.list_vms_json = self.vm_pages.list_vms, self.vm_pages.list_vms_json
        self.visible_vm_ids = self.vm_pages.visible_vm_ids

        self.nodes = Nodes(self.db, self.batcher)
        self.save_node, self.save_node_later = self.nodes.save_node, self.nodes.save_node_later
        self.get_node, self.list_nodes = self.nodes.get_node, self.nodes.list_nodes

        self.operations = Operations(self.db, self.batcher)
        self.add_op, self.update_op = self.operations.add_op, self.operations.update_op
        self.get_op, self.list_ops = self.operations.get_op, self.operations.list_ops
        self.unfinished_ops = self.operations.unfinished_ops

        self.events = Events(self.db, self.batcher)
        self.add_events, self.list_events = self.events.add_events, self.events.list_events

        self.tokens = Tokens(self.db)
        self.add_token, self.find_token = self.tokens.add_token, self.tokens.find_token
        self.get_token, self.list_tokens = self.tokens.get_token, self.tokens.list_tokens
        self.tokens_with_role = self.tokens.tokens_with_role
        self.revoke_token = self.tokens.revoke_token

        self.plugin_data = PluginValues(self.db)
        self.plugin_get, self.plugin_set = self.plugin_data.plugin_get, self.plugin_data.plugin_set
        self.plugin_atomically = self.plugin_data.plugin_atomically

    async def open(self) -> list[Quarantined]:
        """Create or upgrade the schema and load what the store keeps in memory; returns
        the records that could not be read back and were moved to ``quarantine``."""
        async with self.engine.begin() as conn:
            await conn.run_sync(schema.upgrade)
            quarantined = await sweep(conn)
            rows = (await conn.execute(_LOADED)).all()
        self.derived.loaded(r._mapping for r in rows)
        return quarantined

    async def close(self) -> None:
        await self.flush()
        await self.engine.dispose()
