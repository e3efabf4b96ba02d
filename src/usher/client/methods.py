"""Every method of the client API, declared once for :class:`~usher.client.Client` and
:class:`~usher.client.AsyncClient` (see :mod:`usher.client.endpoint`).

A subclass provides the runners: ``_run`` (a call or a flow of calls, to its answer),
``_pages`` (a listing, page by page, to its items) and ``_stream`` (an event stream to its
events).
"""

from __future__ import annotations

from usher.client import actions, protocol
from usher.client import snapshots as snaps
from usher.client.endpoint import Answer, Paged, Streamed


class Methods:
    """The client API; each attribute is a method built from the request of the same name."""

    request = Answer(protocol.request)
    whoami = Answer(protocol.whoami)

    create_vms = Answer(protocol.create_vms)
    plan_start = Answer(protocol.plan_start)
    list_vms = Answer(protocol.list_vms)
    iter_vms = Paged(protocol.iter_vms)
    get_vm = Answer(protocol.get_vm)
    change_vm = Answer(protocol.change_vm)
    resize_vm = Answer(protocol.resize_vm)
    console = Answer(protocol.console)
    ssh_access = Answer(protocol.ssh_access)

    action = Answer(actions.action)
    plan_migrate = Answer(actions.plan_migrate)
    start_existing = Answer(actions.start_existing)
    stop = Answer(actions.stop)
    destroy = Answer(actions.destroy)
    pause = Answer(actions.pause)
    resume = Answer(actions.resume)
    reboot = Answer(actions.reboot)
    cycle = Answer(actions.cycle)
    migrate = Answer(actions.migrate)

    snapshots = Answer(snaps.snapshots)
    snapshot_create = Answer(snaps.snapshot_create)
    snapshot_revert = Answer(snaps.snapshot_revert)
    snapshot_delete = Answer(snaps.snapshot_delete)
    clone = Answer(snaps.clone)
    image_from_vm = Answer(snaps.image_from_vm)

    get_operation = Answer(protocol.get_operation)
    cancel = Answer(protocol.cancel)
    list_operations = Answer(protocol.list_operations)
    wait = Answer(protocol.wait)

    nodes = Answer(protocol.nodes)
    node = Answer(protocol.node)
    drain = Answer(protocol.drain)
    undrain = Answer(protocol.undrain)
    evacuate = Answer(protocol.evacuate)
    maintenance = Answer(protocol.maintenance)
    activate = Answer(protocol.activate)

    images = Answer(protocol.images)
    image = Answer(protocol.image)
    import_image = Answer(protocol.import_image)
    delete_image = Answer(protocol.delete_image)

    events = Answer(protocol.events)
    iter_events = Paged(protocol.iter_events)
    stream_events = Streamed(protocol.stream_events)
