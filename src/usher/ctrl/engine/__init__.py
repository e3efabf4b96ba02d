"""The operation engine, one phase a module: ``admission`` (check, resolve, authorize,
request hooks), ``placement``, ``runner`` (launch, run, cancel, wait), ``steps`` and
``migration`` (what each kind of operation does to one VM), ``reconcile`` and ``fencing``
(what nodes report), ``recovery`` (after a restart); ``transitions`` is the table of what
may start from which state; ``coordinator`` ties them together as :class:`Engine`."""

from usher.ctrl.engine.admission import in_scope
from usher.ctrl.engine.coordinator import Engine
from usher.ctrl.engine.crew import SYSTEM
from usher.ctrl.engine.errors import RequestError, StepCancelled, StepFailed, StepLost
from usher.ctrl.engine.transitions import TRANSITIONAL, TRANSITIONS

__all__ = [
    "SYSTEM",
    "TRANSITIONAL",
    "TRANSITIONS",
    "Engine",
    "RequestError",
    "StepCancelled",
    "StepFailed",
    "StepLost",
    "in_scope",
]
