"""The loop: ``Session``, which drives modifiers from a training loop.

Its trace recorder and its lockstep across ``torch.distributed`` ranks live with it.
"""

from modfsm.engine.loop.distributed import (
    DEFAULT_TIMEOUT_S,
    Collective,
    CollectiveError,
    DistributedError,
    RankDivergenceError,
    RankFailureError,
    Snapshot,
    TorchCollective,
    agree,
    differences,
    hardware,
    torch_collective,
    unwrap_model,
)
from modfsm.engine.loop.session import (
    STATE_DICT_FORMAT,
    Session,
    SessionMismatchError,
    active_session,
)
from modfsm.engine.loop.trace import (
    FORMAT,
    STAGE_TRIGGERS,
    TraceRecorder,
    check_traceable,
    deduce,
    stage_records,
    transition_records,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FORMAT",
    "STAGE_TRIGGERS",
    "STATE_DICT_FORMAT",
    "Collective",
    "CollectiveError",
    "DistributedError",
    "RankDivergenceError",
    "RankFailureError",
    "Session",
    "SessionMismatchError",
    "Snapshot",
    "TorchCollective",
    "TraceRecorder",
    "active_session",
    "agree",
    "check_traceable",
    "deduce",
    "differences",
    "hardware",
    "stage_records",
    "torch_collective",
    "transition_records",
    "unwrap_model",
]
