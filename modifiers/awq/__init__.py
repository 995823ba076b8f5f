"""AWQ (Lin et al., 2023): activation-aware per-channel scaling before weight quantization.

* :class:`~modfsm.modifiers.awq.AWQModifier`: the one-shot modifier (calibration lifecycle);
* :mod:`modfsm.modifiers.awq.search`: its numerical core (statistics, grid, search).
"""

from modfsm.modifiers.awq.awq import DEFAULT_SCHEME, LLAMA_AWQ_MAPPINGS, AWQModifier
from modfsm.modifiers.awq.search import InputStatistics, SearchResult, search_scales

__all__ = [
    "DEFAULT_SCHEME",
    "LLAMA_AWQ_MAPPINGS",
    "AWQModifier",
    "InputStatistics",
    "SearchResult",
    "search_scales",
]
