"""The application: ``modfsm run`` and its digits workload, ``modfsm oneshot`` with its
built-in causal LM and calibration pipelines, ``modfsm demo``, the CLI.

It uses the library (every layer below) and nothing in the library uses it.
Each module is imported on its own: ``import modfsm.engine.app`` loads none of them.
"""

__all__ = ["causal_lm", "cli", "demo", "digits", "oneshot", "pipeline", "runner"]
