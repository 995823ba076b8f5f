"""A :class:`~modfsm.engine.loop.session.Session` in a hand-written ``accelerate`` loop.

Needs the ``accelerate`` extra (``pip install 'modfsm[accelerate]'``)::

    accelerator = Accelerator(gradient_accumulation_steps=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    session = new_session(accelerator)          # saved and restored with save_state/load_state
    initialize(session, accelerator, model=model, optimizer=optimizer, recipe="recipe.yaml")
    for batch in loader:
        with accelerator.accumulate(model):
            session.batch_start(batch)
            loss = session.loss_calculated(compute_loss(model, batch)).loss
            accelerator.backward(loss)
            optimizer.step()                    # the session hears the real steps only
            optimizer.zero_grad()
            session.batch_end()
    session.finalize()

What it takes care of:

* **Steps.** ``optimizer`` is accelerate's ``AcceleratedOptimizer``: its ``step()`` runs the
  torch optimizer only when the accumulation is complete (or the data loader ends).
  The session hooks that torch optimizer (``wrap_optimizer=True`` sees through the
  wrapper), so it reports exactly the real steps, and a step that ends a shorter, last
  accumulation of an epoch as a partial step; ``batches_per_step`` is the accelerator's
  ``gradient_accumulation_steps``.
* **Checkpoints.** :func:`new_session` registers the session with
  ``accelerator.register_for_checkpointing``: ``accelerator.save_state(dir)`` saves it and
  ``accelerator.load_state(dir)``, called before :func:`initialize`, resumes it (the
  accelerator restores its own accumulation counter at the same time).
* **The loss.** Train on what ``session.loss_calculated(loss)`` returns: a modifier may
  replace ``state.loss`` (distillation, a regularizer).
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator

from modfsm.engine.kernel.errors import ConfigError
from modfsm.engine.loop.session import Session
from modfsm.engine.model.state import ModifiedState

__all__ = ["initialize", "new_session"]


def new_session(accelerator: Accelerator, **session_options: Any) -> Session:
    """A new :class:`Session` that ``accelerator.save_state``/``load_state`` save and restore.

    Args:
        accelerator: the run's accelerator.
        **session_options: passed to ``Session(...)`` (``agree_every=``, ...).
    """
    session = Session(**session_options)
    accelerator.register_for_checkpointing(session)
    return session


def initialize(
    session: Session,
    accelerator: Accelerator,
    *,
    model: Any,
    optimizer: Any,
    recipe: Any = None,
    **options: Any,
) -> ModifiedState:
    """``session.initialize`` for a loop ``accelerator`` prepared: one optimizer step per
    ``gradient_accumulation_steps`` batches, reported by the optimizer itself.

    Args:
        session: the session (from :func:`new_session` to be checkpointed with the run).
        accelerator: the accelerator that prepared ``model`` and ``optimizer``.
        model: the prepared model (a ``DistributedDataParallel`` wrapper is seen through).
        optimizer: the prepared optimizer (an ``AcceleratedOptimizer``).
        recipe: the recipe (whatever ``Session.initialize`` takes).
        **options: the other arguments of ``Session.initialize`` (``trace=``, ...).

    Raises:
        ConfigError: ``batches_per_step`` or ``wrap_optimizer`` given and different from
            what the accelerator implies.
    """
    accumulation = accelerator.gradient_accumulation_steps
    for name, implied in (("batches_per_step", accumulation), ("wrap_optimizer", True)):
        if name in options and options[name] != implied:
            raise ConfigError(
                f"modfsm.engine.integrations.accelerate.initialize: {name}={options[name]!r} "
                f"contradicts the accelerator ({name} is {implied!r} for a loop it prepared: "
                "gradient_accumulation_steps batches per step, steps reported by the "
                f"optimizer). To fix, drop {name}=.",
                owner="integrations.accelerate",
                field=name,
                value=options[name],
            )
    options.update(batches_per_step=accumulation, wrap_optimizer=True)
    return session.initialize(model=model, optimizer=optimizer, recipe=recipe, **options)
