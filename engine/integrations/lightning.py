"""A :class:`~modfsm.engine.loop.session.Session` in a ``lightning.pytorch.Trainer``.

Needs the ``lightning`` extra (``pip install 'modfsm[lightning]'``)::

    class Net(pl.LightningModule):
        def training_step(self, batch, batch_idx):
            loss = compute_loss(self, batch)
            return modified_loss(self, loss)        # train on what the modifiers made of it

    trainer = pl.Trainer(accumulate_grad_batches=4, callbacks=[SessionCallback("recipe.yaml")])
    trainer.fit(Net(), loader)                      # or fit(..., ckpt_path=...) to resume

What it takes care of, with automatic optimization and one optimizer:

* **The batches.** :class:`SessionCallback` reports ``batch_start`` from
  ``on_train_batch_start`` and ``batch_end`` from ``on_train_batch_end``; it
  initializes the session in ``on_train_start`` (the optimizer exists and a checkpoint
  has been restored by then) and finalizes it in ``on_train_end``. A run that fails
  (``on_exception``) is not finalized, but every torch hook is removed.
* **The steps.** Lightning steps through ``optimizer.step(closure)``: the torch
  optimizer's step pre-hook fires *before* the closure runs ``training_step`` and
  ``backward``, so it cannot report ``optim_pre_step`` on its own (the loss would
  come after the step began: rule G7). The callback reports ``optim_pre_step`` once
  both have happened in the batch: ``on_before_optimizer_step`` (after ``backward``)
  and the torch step pre-hook (the optimizer really steps); and ``optim_post_step``
  from the torch step post-hook, after the parameters changed. So a step a
  ``GradScaler`` skips reports neither, and the batch ends as a skipped step batch.
  ``batches_per_step`` is ``trainer.accumulate_grad_batches``; the step Lightning
  takes at the last, shorter accumulation of an epoch is reported as a partial step
  (``optim_pre_step(partial=True)``). A closure the optimizer evaluates several
  times (``LBFGS``) is reported once: the first evaluation's loss, one step.
* **The loss.** A callback cannot replace what ``backward`` receives, so the module
  trains on it itself: ``training_step`` returns :func:`modified_loss` ``(self,
  loss)``, which reports ``loss_calculated(loss)`` and returns the loss the modifiers
  left (a distillation or regularizing modifier replaces ``state.loss``). A module
  that does not call it still works: the callback reports the loss Lightning is
  about to back-propagate (``on_before_backward``: divided by
  ``accumulate_grad_batches``, scaled under a ``GradScaler``), and raises if a
  modifier replaced it, since that replacement would be lost.
* **Checkpoints.** The callback's ``state_dict()`` is the session's, so every
  Lightning checkpoint holds it, and ``trainer.fit(..., ckpt_path=...)`` resumes
  the session where the checkpoint was taken: Lightning calls the callback's
  ``load_state_dict`` before ``on_train_start``, where the session loads it before
  ``initialize``. A checkpoint taken in ``on_train_batch_end`` by a callback that
  runs before this one holds a batch that has not ended yet; Lightning resumes after
  that batch, so the resumed session ends it first. Checkpoints Lightning takes
  itself (``ModelCheckpoint``, which Lightning runs last) hold a session between
  batches.

Not supported, refused with the fix: manual optimization, more than one optimizer,
strategies that accumulate gradients themselves (DeepSpeed), and a
``LightningModule.on_train_batch_start`` that returns ``-1``. (Lightning itself refuses
several optimizers under automatic optimization, and two of these callbacks in one
Trainer: they would share a checkpoint key.)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final

import attrs
import lightning.pytorch as pl
import torch
from torch.utils.hooks import RemovableHandle

from modfsm.engine.kernel.errors import ConfigError, LifecycleError
from modfsm.engine.loop.session import Session, hookable_optimizer
from modfsm.engine.model.session_grammar import SessionState

__all__ = ["STATE_DICT_FORMAT", "LightningIntegrationError", "SessionCallback", "modified_loss"]

#: The ``format`` of :meth:`SessionCallback.state_dict`.
STATE_DICT_FORMAT: Final = "modfsm.lightning/1"

#: What the callback passes to ``Session.initialize`` itself.
_IMPLIED: Final = ("model", "optimizer", "batches_per_step", "wrap_optimizer")
_ACCUMULATING: Final = frozenset({SessionState.ACCUMULATING, SessionState.ACCUMULATING_LOSS})
#: Positions of a batch that may end now (its step, if any, is complete or skipped).
_ENDABLE: Final = _ACCUMULATING | {
    SessionState.STEP_DUE,
    SessionState.STEP_DUE_LOSS,
    SessionState.STEPPED,
}
_OWNER: Final = "integrations.lightning.SessionCallback"


class LightningIntegrationError(LifecycleError, RuntimeError):
    """The Lightning run did something the callback cannot report to its session.

    Attributes:
        hook: the Lightning hook (or function) that found it.
    """

    def __init__(self, message: str, *, hook: str) -> None:
        super().__init__(message)
        self.hook = hook


@attrs.define
class _Batch:
    """What happened in the current training batch, as the callback heard it."""

    loss_reported: bool = False
    loss_replaced: bool = False
    closure_ran: bool = False
    step_entered: bool = False
    pre_reported: bool = False


class SessionCallback(pl.Callback):
    """Runs a modfsm recipe in a ``lightning.pytorch.Trainer`` (automatic optimization).

    Args:
        recipe: the recipe: anything ``Session.initialize(recipe=...)`` takes (a list of
            modifiers, a YAML path or text, a dict, a ``Recipe``). A list of modifier
            instances is used by one ``fit``; give a new callback to the next.
        **session_options: the other arguments of ``Session.initialize`` (``trace=``,
            ``steps_per_epoch=``, ``teacher_model=``, modifier keyword arguments, ...).
            ``model``, ``optimizer``, ``batches_per_step`` and ``wrap_optimizer`` are
            the callback's: the LightningModule, the Trainer's optimizer,
            ``trainer.accumulate_grad_batches`` and its own step reporting.

    Each ``fit`` builds a new session in ``on_train_start``, which counts steps and
    batches from 0, or from the checkpoint's session when fitting with ``ckpt_path=``:
    ``session.global_step`` is then ``trainer.global_step`` (except for steps a
    ``GradScaler`` skipped, which Lightning counts and the session does not). A
    checkpoint saved without this callback resumes Lightning's counters, not the session's.

    Attributes:
        session: the session of the current (or last) ``fit``; None before the first.

    Raises:
        ConfigError: ``session_options`` names one of the arguments the callback sets.
    """

    def __init__(self, recipe: Any, **session_options: Any) -> None:
        for name in _IMPLIED:
            if name in session_options:
                raise ConfigError(
                    f"SessionCallback: {name}={session_options[name]!r} is set by the callback "
                    "(the LightningModule, the Trainer's optimizer, "
                    "Trainer(accumulate_grad_batches=...) and the callback's own step "
                    f"reporting). To fix, drop {name}=.",
                    owner=_OWNER,
                    field=name,
                    value=session_options[name],
                )
        self.recipe = recipe
        self.session_options = session_options
        self.session: Session | None = None
        self._saved: dict[str, Any] | None = None
        self._batch = _Batch()
        self._handles: list[RemovableHandle] = []

    # --- checks --------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse, before anything runs, what the callback cannot report (fit only)."""
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ConfigError(
                f"SessionCallback: {type(pl_module).__qualname__}.automatic_optimization is "
                "False; the callback reports the steps Lightning's automatic optimization "
                "takes and cannot see the steps of a manual training_step. To fix, use "
                "automatic optimization, or drive the Session yourself in training_step "
                "(batch_start, loss_calculated, optim_pre_step/optim_post_step around "
                "opt.step(), batch_end).",
                owner=_OWNER,
                field="automatic_optimization",
                value=False,
            )
        if trainer.strategy.handles_gradient_accumulation:
            raise ConfigError(
                f"SessionCallback: the strategy {type(trainer.strategy).__qualname__} "
                "accumulates gradients itself, so the callback cannot tell which batch "
                "steps. To fix, use a strategy that leaves accumulation to the Trainer "
                "(single device, DDP).",
                owner=_OWNER,
                field="strategy",
                value=type(trainer.strategy).__qualname__,
            )

    # --- the run -------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build and initialize the session (resumed if a checkpoint was loaded).

        Raises:
            ConfigError: the Trainer has more than one optimizer.
            LightningIntegrationError: the checkpoint's session had finalized, or was
                saved in the middle of an optimizer step.
        """
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise ConfigError(
                f"SessionCallback: configure_optimizers gave {len(optimizers)} optimizers; "
                "a session reports the steps of one optimizer. To fix, return one "
                "optimizer (a parameter group per part of the model if they need other "
                "settings).",
                owner=_OWNER,
                field="optimizers",
                value=len(optimizers),
            )
        saved, self._saved = self._saved, None
        session = Session()
        session.__enter__()  # active_session() for the modifiers; left in on_train_end
        self.session = session
        if saved is not None:
            if saved["finalized"]:
                raise LightningIntegrationError(
                    "SessionCallback: the checkpoint was saved after the session finalized "
                    "(the recipe had been applied); resuming would run it again. To fix, "
                    "resume from a checkpoint saved during training, or fit without the "
                    "callback to train further.",
                    hook="on_train_start",
                )
            if saved["session"] is not None:
                session.load_state_dict(saved["session"])
        optimizer = optimizers[0]
        session.initialize(
            model=pl_module,
            optimizer=optimizer,
            recipe=self.recipe,
            batches_per_step=trainer.accumulate_grad_batches,
            wrap_optimizer=False,
            **self.session_options,
        )
        position = session.position
        if position is SessionState.STEPPING:
            raise LightningIntegrationError(
                "SessionCallback: the checkpoint was saved inside an optimizer step "
                "(optim_pre_step reported, optim_post_step not yet), where no run can "
                "resume. To fix, save checkpoints from on_train_batch_end or later "
                "(ModelCheckpoint does).",
                hook="on_train_start",
            )
        if position in _ENDABLE:
            # Saved in on_train_batch_end before this callback's: Lightning resumes after
            # that batch, so end it here, as the interrupted run did next.
            session.batch_end()
        hooked = hookable_optimizer(optimizer)
        self._handles = [
            hooked.register_step_pre_hook(self._step_pre_hook),
            hooked.register_step_post_hook(self._step_post_hook),
        ]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Report ``batch_start(batch)``.

        Raises:
            LightningIntegrationError: the previous batch never ended (the module's
                ``on_train_batch_start`` returned -1).
        """
        session = self._live("on_train_batch_start")
        if session.position is not SessionState.IDLE:
            raise LightningIntegrationError(
                f"SessionCallback: batch {batch_idx} starts while the previous batch is open "
                f"in the session (position {session.position.value!r}): Lightning skipped "
                "it after on_train_batch_start (a LightningModule.on_train_batch_start "
                "that returns -1 ends the epoch without on_train_batch_end), so the "
                "session cannot count it. To fix, stop with trainer.should_stop = True "
                "instead of returning -1.",
                hook="on_train_batch_start",
            )
        self._batch = _Batch()
        session.batch_start(batch)

    def loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Report ``loss_calculated(loss)`` and return the loss the modifiers left.

        :func:`modified_loss` calls it from ``training_step``. A later evaluation of the
        same batch's closure (``LBFGS``) returns ``loss`` unchanged, once reported.

        Raises:
            LightningIntegrationError: the closure is evaluated again in a batch where a
                modifier replaced the loss (the replacement cannot be made again).
        """
        session = self._live("modified_loss")
        if self._batch.loss_reported:
            if self._batch.loss_replaced:
                raise LightningIntegrationError(
                    "modified_loss: the optimizer evaluates the closure again in this batch "
                    "(LBFGS does), but a modifier replaced this batch's loss and a session "
                    "takes one loss per batch. To fix, use an optimizer that evaluates the "
                    "closure once, or a recipe whose modifiers leave the loss as it is.",
                    hook="modified_loss",
                )
            return loss
        trained_on: torch.Tensor = session.loss_calculated(loss).loss
        self._batch.loss_reported = True
        self._batch.loss_replaced = trained_on is not loss
        return trained_on

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        """Report the loss Lightning back-propagates, unless :func:`modified_loss` did.

        Raises:
            LightningIntegrationError: a modifier replaced it: the module must train on
                :func:`modified_loss`.
        """
        if self._batch.loss_reported:
            return
        session = self._live("on_before_backward")
        trained_on = session.loss_calculated(loss).loss
        self._batch.loss_reported = True
        if trained_on is not loss:
            raise LightningIntegrationError(
                f"SessionCallback: a modifier replaced the loss (with {trained_on!r}), but "
                f"{type(pl_module).__qualname__}.training_step returns its own loss, which "
                "a callback cannot replace. To fix, return modified_loss(self, loss) from "
                "training_step (from modfsm.engine.integrations.lightning).",
                hook="on_before_backward",
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """The gradients are ready and Lightning is about to step: report ``optim_pre_step``
        if the torch optimizer's step began (see the module docstring)."""
        self._batch.closure_ran = True
        self._report_pre_step()

    def _step_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._batch.step_entered = True
        if self._batch.closure_ran:  # the closure ran first (a GradScaler's step)
            self._report_pre_step()

    def _report_pre_step(self) -> None:
        if self._batch.pre_reported or not self._batch.step_entered:
            return
        session = self._live("on_before_optimizer_step")
        session.optim_pre_step(partial=session.position in _ACCUMULATING)
        self._batch.pre_reported = True

    def _step_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._batch.pre_reported:  # a step without Lightning's closure: report it all
            self._batch.closure_ran = True
            self._report_pre_step()
        self._live("optimizer.step").optim_post_step()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Report ``batch_end()``."""
        self._live("on_train_batch_end").batch_end()
        self._batch = _Batch()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Finalize the session and remove the optimizer hooks."""
        self._remove_hooks()
        if self.session is not None:
            self.session.__exit__(None, None, None)  # finalizes

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Leave the session unfinalized, with every torch hook removed."""
        self._remove_hooks()
        if self.session is not None:
            traceback: TracebackType | None = exception.__traceback__
            self.session.__exit__(type(exception), exception, traceback)

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The session's state, for Lightning's checkpoint (``format``, ``session``,
        ``finalized``); ``session`` is None before the session is initialized."""
        session = self.session
        live = session is not None and session.position not in (
            SessionState.CREATED,
            SessionState.FINALIZED,
        )
        return {
            "format": STATE_DICT_FORMAT,
            "session": session.state_dict() if live and session is not None else None,
            "finalized": session is not None and session.position is SessionState.FINALIZED,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's session state for ``on_train_start`` (Lightning calls this
        first when fitting with ``ckpt_path=``).

        Raises:
            ConfigError: ``state_dict`` is not this callback's state.
        """
        if state_dict.get("format") != STATE_DICT_FORMAT:
            raise ConfigError(
                f"SessionCallback.load_state_dict: format {state_dict.get('format')!r} is not "
                f"{STATE_DICT_FORMAT!r}. To fix, resume from a checkpoint a SessionCallback "
                "saved.",
                owner=_OWNER,
                field="format",
                value=state_dict.get("format"),
            )
        self._saved = state_dict

    # --- helpers -------------------------------------------------------------------------------

    def _live(self, where: str) -> Session:
        if self.session is None:
            raise LightningIntegrationError(
                f"{where}: the SessionCallback has no session yet (it starts one in "
                "on_train_start). To fix, call it while trainer.fit trains.",
                hook=where,
            )
        return self.session

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def modified_loss(module: pl.LightningModule, loss: torch.Tensor) -> torch.Tensor:
    """The loss ``module`` trains on: ``loss`` as the recipe's modifiers left it.

    Call it in ``training_step`` and return (or back-propagate) what it returns: it
    reports ``loss_calculated(loss)`` to the session of the Trainer's
    :class:`SessionCallback`, whose modifiers may replace the loss. Outside training
    (validation, sanity checks) it returns ``loss`` unchanged.

    Raises:
        ConfigError: the module's Trainer has no SessionCallback.
    """
    trainer = module.trainer
    if not trainer.training:
        return loss
    for callback in _callbacks(trainer):
        if isinstance(callback, SessionCallback):
            return callback.loss(loss)
    raise ConfigError(
        f"modified_loss: the Trainer of {type(module).__qualname__} has no SessionCallback, so "
        "no recipe can change the loss. To fix, pass Trainer(callbacks=[SessionCallback("
        "recipe)]), or return the loss itself.",
        owner="integrations.lightning.modified_loss",
        field="trainer.callbacks",
        value=[type(c).__qualname__ for c in _callbacks(trainer)],
    )


def _callbacks(trainer: pl.Trainer) -> list[pl.Callback]:
    # The callback connector sets Trainer.callbacks in __init__; Trainer does not declare it.
    callbacks: list[pl.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return callbacks
