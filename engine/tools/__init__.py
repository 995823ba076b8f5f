"""Tools over the declared machines and the runtime: for modifier authors and documentation.

* :mod:`~modfsm.engine.tools.testing` — the test kit (strategies, contracts, the
  pytest plugin);
* :mod:`~modfsm.engine.tools.verify` — structural proofs and Spin model checks;
* :mod:`~modfsm.engine.tools.diagrams` — state diagrams and recipe timelines;
* :mod:`~modfsm.engine.tools.sphinx` — the Sphinx extension (the ``modfsm-diagram``
  directive), loaded by Sphinx only;
* :mod:`~modfsm.engine.tools.replay` — replaying a recorded trace against the tables;
* :mod:`~modfsm.engine.tools.transitions_adapter` — the one module that imports
  ``transitions``.

Each is imported on its own (``import modfsm.engine.tools`` loads none of them):
they need optional packages (hypothesis, graphviz, sphinx) that the runtime does not.
"""

__all__ = ["diagrams", "replay", "sphinx", "testing", "transitions_adapter", "verify"]
