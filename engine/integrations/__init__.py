"""Adapters that run a :class:`~modfsm.engine.loop.session.Session` inside the training
loops of other frameworks, each needing its optional extra:

* :mod:`~modfsm.engine.integrations.accelerate` — a hand-written ``accelerate`` loop
  (``pip install 'modfsm[accelerate]'``);
* :mod:`~modfsm.engine.integrations.transformers` — a ``transformers.Trainer``
  callback (``pip install 'modfsm[transformers]'``);
* :mod:`~modfsm.engine.integrations.lightning` — a ``lightning.pytorch.Callback``
  (``pip install 'modfsm[lightning]'``).

Each is imported on its own (``import modfsm.engine.integrations`` loads none of them,
nor any framework).
"""

__all__ = ["accelerate", "lightning", "transformers"]
