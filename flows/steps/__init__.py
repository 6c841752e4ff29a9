"""Compiled steps: plain objects that every runtime executes.

:func:`flows.compiler.compile_app` builds them from the wiring. The Kafka runtime and the
in-memory test driver call the very same methods, so a flow tested with
:mod:`flows.testing` is the flow that runs in production. One module per kind of step;
:mod:`flows.steps.base` holds what they share.
"""

from flows.steps.base import BatchResult, Step, StepKind
from flows.steps.ingest import IngestRoute
from flows.steps.materialise import MaterialiseStep
from flows.steps.rekey import RekeyStep
from flows.steps.stateful import StatefulStep
from flows.steps.stateless import StatelessStep

__all__ = [
    "BatchResult",
    "IngestRoute",
    "MaterialiseStep",
    "RekeyStep",
    "StatefulStep",
    "StatelessStep",
    "Step",
    "StepKind",
]
