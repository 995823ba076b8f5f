"""A :class:`~modfsm.engine.loop.session.Session` inside a ``transformers.Trainer``.

Needs the ``transformers`` extra (``pip install 'modfsm[transformers]'``)::

    callback = SessionCallback(recipe="recipe.yaml")       # or a list of modifiers, a dict
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()                                        # or resume_from_checkpoint=...
    callback.session                                       # the run's finalized session

:class:`SessionTrainer` is the same ``Trainer`` whose ``compute_loss`` reports the loss:
use it (or list it first among your own ``Trainer`` subclass's bases) when the loss
does not come out of the model (``compute_loss_func``, label smoothing, your own
``compute_loss``).

How the Trainer's loop reaches the session (``Trainer._run_epoch``, transformers 5.25):

* **Micro-batches.** The Trainer has no callback before a micro-batch's forward, so
  the callback hooks the model: its forward pre-hook calls ``batch_start(inputs)``
  when the model, in training mode with gradients on, is called while no batch is
  open (evaluation runs in eval mode under ``no_grad`` and is left alone; a second
  forward in the same micro-batch finds the batch open). ``on_substep_end`` (a
  micro-batch that accumulates) and ``on_step_end`` (the one the optimizer stepped
  after) call ``batch_end``. So each micro-batch is delivered once, with its real
  inputs, and no batch is opened ahead of a forward that might not come.
* **Steps.** ``initialize(wrap_optimizer=True, batches_per_step=
  gradient_accumulation_steps)``: the torch optimizer inside accelerate's
  ``AcceleratedOptimizer`` reports ``optim_pre_step``/``optim_post_step`` from its
  own ``step()``, and the step that ends the shorter, last accumulation of an epoch
  as a partial step. ``session.global_step`` equals ``trainer.state.global_step``.
* **The loss.** Modifiers may replace ``state.loss``; the Trainer must then train on
  what ``session.loss_calculated(loss).loss`` returns. By default the callback's
  forward hook reports the ``loss`` the model returned (a ``ModelOutput`` or dict
  with ``"loss"``) and puts the returned loss back in the output, which the stock
  ``compute_loss`` returns: no subclass needed when the model computes the loss
  (the usual ``labels`` in the batch). :class:`SessionTrainer` instead reports what
  its ``compute_loss`` returns and trains on the result, whatever computed it. The
  loss is the one ``compute_loss`` returns, before ``training_step`` divides it by the
  accumulation steps (when the model did not already normalize it over the
  accumulated batch's items, ``num_items_in_batch``).
  Why hooks rather than a required subclass: a callback alone then runs a recipe in a
  stock Trainer (or any Trainer subclass), and the subclass stays an opt-in for losses
  the model does not compute.
* **Checkpoints.** ``on_save`` writes ``session.state_dict()`` to
  ``checkpoint-N/modfsm_session.pt`` (``torch.save`` to a temporary file, then
  ``os.replace``); ``trainer.train(resume_from_checkpoint=...)`` loads it
  (``torch.load(weights_only=True)``) before ``initialize``. The callback finds it in
  ``<output_dir>/checkpoint-<global step>``, the folder the Trainer saved and
  ``resume_from_checkpoint=True`` picks; :class:`SessionTrainer` passes the exact
  folder given to ``train``. A missing, damaged or mismatched file raises
  :class:`SessionFileError`.
* **Mixed precision.** bf16 runs on CPU (``bf16=True, use_cpu=True``) and is tested;
  fp16 needs an accelerator. A ``GradScaler`` skip of a full step is a skipped step
  (the session does not count it, the Trainer does); a skip of the step ending a
  shorter, last accumulation cannot be told to the session (the grammar has no
  skipped partial step), so its windows would then shift by one batch.

Not supported: several ``SessionCallback`` in one Trainer, hyperparameter search
(checkpoints under ``run-<trial>``), DeepSpeed and FSDP (``Session`` does not support
FSDP).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from pathlib import Path
from pickle import UnpicklingError
from typing import Any, Final, Literal

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint

from modfsm.engine.kernel.errors import ConfigError
from modfsm.engine.loop.session import Session
from modfsm.engine.model.session_grammar import SessionState

__all__ = ["SESSION_FILE", "SessionCallback", "SessionFileError", "SessionTrainer"]

SESSION_FILE: Final = "modfsm_session.pt"
"""The session's file inside each ``checkpoint-N`` folder."""

_OWNER: Final = "SessionCallback"
#: Options of ``Session.initialize`` the callback sets from the Trainer itself.
_SET_BY_CALLBACK: Final = ("model", "optimizer", "recipe", "batches_per_step", "wrap_optimizer")
#: Positions of a batch that is open and has not reported its loss.
_AWAITING_LOSS: Final = (SessionState.ACCUMULATING, SessionState.STEP_DUE)

_log = logging.getLogger("modfsm")


class SessionFileError(ConfigError):
    """The session file of a Trainer checkpoint is missing, damaged or does not fit.

    Attributes:
        path: the session file.
    """

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(
            f"{_OWNER}: session file {str(path)!r} {problem}. To fix, {fix}.",
            owner=_OWNER,
            field="resume_from_checkpoint",
            value=str(path),
        )
        self.path = path


class SessionCallback(TrainerCallback):
    """Runs a modfsm recipe in a ``transformers.Trainer``: one :class:`Session` per ``train()``.

    Args:
        recipe: what ``Session.initialize(recipe=...)`` takes: a list of modifiers, a
            YAML path or text, a dict, a ``Recipe``.
        **options: the other arguments of ``Session.initialize`` (``trace=``,
            ``steps_per_epoch=``, ``teacher_model=``, modifier keyword arguments, ...);
            not ``model``, ``optimizer``, ``recipe``, ``batches_per_step`` or
            ``wrap_optimizer``, which come from the Trainer.

    Attributes:
        session: the session of the current (or last) ``train()``; None before.
        resume_from: the checkpoint folder to restore the session from, when the
            Trainer resumes; None: ``<output_dir>/checkpoint-<global step>``.
            :class:`SessionTrainer` sets it from ``train(resume_from_checkpoint=...)``.
        loss_from: ``"model"``: the forward hook reports the ``loss`` in the model's
            output; ``"trainer"``: :class:`SessionTrainer`'s ``compute_loss`` does.

    Raises:
        ConfigError: ``options`` names an argument the callback sets itself.
    """

    def __init__(self, recipe: Any, **options: Any) -> None:
        taken = sorted(set(options) & set(_SET_BY_CALLBACK))
        if taken:
            raise ConfigError(
                f"{_OWNER}: {', '.join(taken)} given, but the callback sets "
                f"{', '.join(_SET_BY_CALLBACK)} from the Trainer (its model, its optimizer, "
                "gradient_accumulation_steps batches per step, steps reported by the "
                f"optimizer). To fix, drop {', '.join(f'{name}=' for name in taken)}.",
                owner=_OWNER,
                field=taken[0],
                value=options[taken[0]],
            )
        self.recipe = recipe
        self.options = options
        self.session: Session | None = None
        self.resume_from: str | None = None
        self.loss_from: Literal["model", "trainer"] = "model"
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # --- the Trainer's callbacks ----------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Build this run's session (restored from the checkpoint when the Trainer resumes),
        initialize it with the Trainer's model and optimizer, and hook the model."""
        model: torch.nn.Module = kwargs["model"]
        optimizer = kwargs["optimizer"]
        self._abandon()
        session = Session()
        if state.global_step > 0:
            self._restore(session, args, state)
        if self.loss_from == "model" and args.label_smoothing_factor:
            _log.warning(
                "%s: label_smoothing_factor=%s: the Trainer computes the loss outside the "
                "model, so modifiers do not see it. To fix, use SessionTrainer.",
                _OWNER,
                args.label_smoothing_factor,
            )
        session.initialize(
            model=model,
            optimizer=optimizer,
            recipe=self.recipe,
            batches_per_step=args.gradient_accumulation_steps,
            wrap_optimizer=True,
            **self.options,
        )
        session.__enter__()  # active_session() in the modifiers' hooks
        self.session = session
        self._handles = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, with_kwargs=True),
        ]

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Check that the micro-batch the optimizer steps after was delivered."""
        self._open_session("on_pre_optimizer_step")

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """``batch_end`` of a micro-batch that accumulated gradients."""
        self._open_session("on_substep_end").batch_end()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """``batch_end`` of the micro-batch the optimizer stepped after."""
        self._open_session("on_step_end").batch_end()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the session's state into the checkpoint the Trainer just saved."""
        if self.session is None or not args.should_save:
            return
        folder = _checkpoint_folder(args, state)
        if not folder.is_dir():
            raise SessionFileError(
                folder / SESSION_FILE,
                "cannot be written: the Trainer saved no checkpoint folder there",
                "save checkpoints under args.output_dir (hyperparameter search, which saves "
                "under run-<trial>, is not supported)",
            )
        _write(folder / SESSION_FILE, self.session.state_dict())

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Finalize the session and unhook the model."""
        self._remove_model_hooks()
        if self.session is not None:
            self.session.__exit__(None, None, None)  # finalizes it

    # --- the micro-batch --------------------------------------------------------------------

    def report_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss_calculated(loss)`` for the open micro-batch; the loss to train on."""
        replaced: torch.Tensor = self._open_session("loss").loss_calculated(loss).loss
        return replaced

    def open_batch(self, module: torch.nn.Module, batch: Any) -> None:
        """``batch_start(batch)`` if ``module`` trains, gradients are on and no batch is open."""
        session = self.session
        if (
            session is not None
            and session.position is SessionState.IDLE
            and module.training
            and torch.is_grad_enabled()
        ):
            session.batch_start(batch)

    def awaits_loss(self, module: torch.nn.Module) -> bool:
        """Whether the open micro-batch of a training forward of ``module`` has no loss yet."""
        return (
            self.session is not None
            and self.session.position in _AWAITING_LOSS
            and module.training
            and torch.is_grad_enabled()
        )

    def _before_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.open_batch(module, dict(kwargs) if kwargs else args)

    def _after_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if self.loss_from != "model" or not self.awaits_loss(module):
            return
        if isinstance(output, MutableMapping) and isinstance(output.get("loss"), torch.Tensor):
            output["loss"] = self.report_loss(output["loss"])

    def _open_session(self, where: str) -> Session:
        session = self.session
        if session is None or session.position in (SessionState.IDLE, SessionState.FINALIZED):
            raise ConfigError(
                f"{_OWNER}.{where}: no micro-batch is open (session position "
                f"{None if session is None else session.position.value!r}): the Trainer ran a "
                "micro-batch without calling the model the callback hooked in training mode. "
                "To fix, call the model given to the Trainer in compute_loss, or use "
                "SessionTrainer (its compute_loss opens the micro-batch).",
                owner=_OWNER,
                field=where,
                value=None if session is None else session.position.value,
            )
        return session

    # --- resume -----------------------------------------------------------------------------

    def _restore(self, session: Session, args: TrainingArguments, state: TrainerState) -> None:
        folder = _checkpoint_folder(args, state) if self.resume_from is None else self.resume_from
        path = Path(folder) / SESSION_FILE
        fix = (
            f"resume from a checkpoint folder holding the {SESSION_FILE} a {_OWNER} saved "
            "there (an earlier one if this one is damaged), or train without "
            "resume_from_checkpoint (the recipe then starts at step 0)"
        )
        if not path.is_file():
            raise SessionFileError(
                path, f"not found (the Trainer resumes at step {state.global_step})", fix
            )
        try:
            saved = torch.load(path, weights_only=True)
            session.load_state_dict(saved)
        except (ConfigError, UnpicklingError, OSError, EOFError, RuntimeError, ValueError) as error:
            raise SessionFileError(path, f"is damaged ({_reason(error)})", fix) from error
        step = saved["counters"]["global_step"]
        if step != state.global_step:
            raise SessionFileError(
                path,
                f"holds the session at optimizer step {step}, but the Trainer resumes at "
                f"step {state.global_step}",
                f"resume from the checkpoint folder the file was saved in, or pass that folder "
                f"to SessionTrainer.train(resume_from_checkpoint=...); {fix}",
            )

    # --- clean-up ---------------------------------------------------------------------------

    def _remove_model_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _abandon(self) -> None:
        """Leave a session a failed ``train()`` left open, removing its torch hooks."""
        self._remove_model_hooks()
        session = self.session
        if session is not None and session.position not in (
            SessionState.CREATED,
            SessionState.FINALIZED,
        ):
            error = RuntimeError("abandoned: the Trainer started a new train()")
            session.__exit__(type(error), error, None)  # removes hooks, does not finalize


class SessionTrainer(Trainer):
    """A ``Trainer`` that trains on the loss the session's modifiers return.

    Its ``compute_loss`` opens the micro-batch with its inputs, computes the loss
    (``super().compute_loss``: the model's, ``compute_loss_func``, label smoothing, or
    that of a class later in the MRO), reports it with ``loss_calculated`` and returns
    what the modifiers left. Its ``train`` tells the :class:`SessionCallback` the exact
    checkpoint folder it resumes from. To combine it with your own Trainer subclass,
    list it first: ``class MyTrainer(SessionTrainer, MyBaseTrainer)``.

    Raises:
        ConfigError: from ``train``: not exactly one :class:`SessionCallback` among
            the callbacks.
    """

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """``Trainer.train``, with the :class:`SessionCallback` told where it resumes from."""
        callback = self.session_callback()
        folder = resume_from_checkpoint
        if folder is True:
            # None: Trainer.train raises. (get_last_checkpoint is not annotated.)
            folder = get_last_checkpoint(self.args.output_dir)  # type: ignore[no-untyped-call]
        callback.resume_from = folder if isinstance(folder, str) else None
        callback.loss_from = "trainer"
        with _resetting(callback):
            output: TrainOutput = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)
        return output

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``Trainer.compute_loss``, reported to the session; a modifier may replace it."""
        callback = self.session_callback()
        callback.open_batch(model, inputs)
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if callback.loss_from != "trainer" or not callback.awaits_loss(model):
            return result  # evaluation, or a train() that bypassed SessionTrainer.train
        if isinstance(result, tuple):  # return_outputs
            loss, outputs = result
            return callback.report_loss(loss), outputs
        return callback.report_loss(result)

    def session_callback(self) -> SessionCallback:
        """The one :class:`SessionCallback` among this Trainer's callbacks."""
        found = [c for c in self.callback_handler.callbacks if isinstance(c, SessionCallback)]
        if len(found) != 1:
            raise ConfigError(
                f"SessionTrainer: {len(found)} SessionCallback among its callbacks, expected "
                "one. To fix, pass callbacks=[SessionCallback(recipe)] (one recipe per "
                "Trainer).",
                owner="SessionTrainer",
                field="callbacks",
                value=len(found),
            )
        return found[0]


def _reason(error: BaseException) -> str:
    """What went wrong reading a session file, in a line (never torch's advice to load
    with ``weights_only=False``)."""
    if isinstance(error, UnpicklingError):
        return "torch.load(weights_only=True) could not read it as plain values and tensors"
    lines = str(error).strip().splitlines()
    first = lines[0].split(" To fix,")[0].rstrip(".") if lines else "no detail"
    return f"{type(error).__name__}: {first}"


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """The folder the Trainer saves the checkpoint of ``state.global_step`` in."""
    output_dir = args.output_dir or "trainer_output"  # TrainingArguments' own default
    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


@contextmanager
def _resetting(callback: SessionCallback) -> Iterator[None]:
    try:
        yield
    finally:
        callback.resume_from = None
        callback.loss_from = "model"


def _write(path: Path, saved: Mapping[str, Any]) -> None:
    """``torch.save(saved)`` to ``path`` atomically: a temporary file, then ``os.replace``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(dict(saved), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
