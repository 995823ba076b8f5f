"""What the one-shot compression modifiers share: Hessians collected while calibrating.

``GPTQModifier`` and ``SparseGPTModifier`` compress each target ``Linear`` layer
from the second moment of its inputs (its Hessian,
:class:`~modfsm.modifiers.solvers.HessianAccumulator`), collected while a
calibration pipeline runs the model. Both run on
:data:`~modfsm.engine.CALIBRATION_LIFECYCLE` (llm-compressor 0.13+), driven by
the events a one-shot pipeline sends::

    session.initialize(model=model, recipe=[...])    # on_initialize: resolve the layers
    session.event(EventType.CALIBRATION_START)       # on_calibration_start: input hooks
    with torch.no_grad():
        for batch in calibration_data:               # basic pipeline: the whole model,
            model(**batch)                           # sequential: one block at a time
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[block])  # (sequential)
    session.event(EventType.CALIBRATION_END)         # the rest; hooks removed
    session.finalize()

Theory of operation:

* ``on_initialize`` resolves the target layers (:meth:`OneShotCompressionBase._resolve`,
  the subclass's targeting rule). Every one must be a ``torch.nn.Linear`` whose
  weight no other module shares (compressing a tied weight in place would
  change its other user too); anything else is a ``ConfigError`` naming the layer.
* ``on_calibration_start`` registers a forward pre-hook (through
  ``register_hook``, so ``finalize`` releases it) on every target layer not
  compressed yet; each call adds the layer's input (``args[0]``, any leading
  shape) to the layer's accumulator. Padding is left out when the model itself
  is called with an ``attention_mask`` keyword shaped like the inputs' leading
  dimensions (a ``(batch, sequence)`` mask): positions where it is 0 add
  nothing. Without one (a sequential pipeline calling blocks directly, or no
  mask) every position counts.
* ``on_sequential_epoch_end`` compresses every target layer inside one of the
  event's ``modules`` (by identity of submodules) that has inputs, then drops
  its accumulator and its hook. Without ``modules`` it compresses every layer
  that has inputs, as llm-compressor 0.14 does at every such event.
* ``on_calibration_end`` compresses every remaining hooked layer and removes
  the hooks. A hooked layer that saw no input is a
  :class:`~modfsm.modifiers.solvers.CalibrationError` listing such layers,
  raised before anything is compressed: the modifier never skips a target
  silently (llm-compressor 0.14 leaves such a layer uncompressed without a
  word). The modifier stays ``started``, so the pipeline can be fixed and the
  event sent again.
* A layer is compressed once: a later calibration (``CALIBRATION_START`` again)
  hooks only the layers still waiting.
* ``finalize`` drops what is left and logs a warning naming the target layers
  that were never compressed (a run without calibration does nothing).

Accumulators hold float32 sums, on the layer's device (the reference's
precision and memory: ``4 * inputs**2`` bytes per layer while it waits); each
solve runs in float64 (:func:`~modfsm.modifiers.solvers.inverse_cholesky` in
the Hessian's precision), robust on badly conditioned inputs.

Checkpoints (``state_dict``) hold whether calibration is running, each waiting
layer's accumulator and each compressed layer's record; ``load_state_dict``
re-attaches the hooks when calibration was running.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn

import attrs
import torch

from modfsm.engine import CALIBRATION_LIFECYCLE, ConfigError, Event, Modifier, State
from modfsm.modifiers.solvers import (
    CalibrationError,
    HessianAccumulator,
    HessianNotPositiveDefiniteError,
)

if TYPE_CHECKING:
    from modfsm.engine.kernel.declaration import Declaration
    from modfsm.engine.runtime.hooks import Handle

__all__ = [
    "CalibrationBase",
    "OneShotCompressionBase",
    "check_dampening_frac",
    "layers_inside",
    "refuse_unless",
]

_LOG: Final = logging.getLogger("modfsm")
_ACCUMULATE: Final = torch.float32
_SOLVE: Final = torch.float64
_STATE_KEYS: Final = frozenset({"calibrating", "accumulators", "records"})


def layers_inside(
    layers: Mapping[str, torch.nn.Module], modules: torch.nn.Module | Iterable[torch.nn.Module]
) -> list[str]:
    """The names of ``layers`` that are one of ``modules`` or lie inside one (by identity).

    Example:
        >>> block = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> layers_inside({"a": block[0], "b": torch.nn.Linear(2, 2)}, [block])
        ['a']
    """
    if isinstance(modules, torch.nn.Module):
        modules = [modules]
    inside = {id(sub) for module in modules for sub in module.modules()}
    return [name for name, layer in layers.items() if id(layer) in inside]


def refuse_unless(owner: str, field: str, value: Any, accepted: tuple[Any, ...], fix: str) -> None:
    """Refuse a reference argument modfsm accepts only at the values that change nothing.

    Raises:
        ConfigError: ``value`` is not one of ``accepted`` (compared by type and value, so
            ``0`` is not ``False``).
    """
    if any(type(value) is type(ok) and value == ok for ok in accepted):
        return
    shown = " or ".join(repr(ok) for ok in accepted)
    raise ConfigError(
        f"{owner}.{field}={value!r} is not supported (only {shown}). To fix, {fix}.",
        owner=owner,
        field=field,
        value=value,
    )


def check_dampening_frac(owner: str, field: str, value: Any) -> None:
    """``dampening_frac``: a finite number >= 0 (a fraction of the Hessian's mean diagonal).

    Raises:
        ConfigError: anything else, naming ``owner.field``.
    """
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (0 <= value < float("inf")):
        raise ConfigError(
            f"{owner}.{field} must be a finite number >= 0, got {value!r}. To fix, write a "
            "fraction of the Hessian's mean diagonal, e.g. 0.01.",
            owner=owner,
            field=field,
            value=value,
        )


@attrs.define(eq=False)
class CalibrationBase(Modifier):
    """What the one-shot modifiers share: the calibration lifecycle, per-layer hooks that
    collect inputs while calibrating (padding left out), and the refusal of a bad state.

    Subclasses keep their hooks in ``_handles`` (by name) and call :meth:`_stop_hooks`
    when calibration ends; :meth:`_collect_inputs` and :meth:`_watch_padding` register
    through the modifier (``register_hook``), so finalize releases whatever is left.
    """

    __lifecycle__: ClassVar[Declaration] = CALIBRATION_LIFECYCLE

    _handles: dict[str, Handle] = attrs.field(init=False, factory=dict, repr=False)
    _padding_handles: list[Handle] = attrs.field(init=False, factory=list, repr=False)
    _padding: torch.Tensor | None = attrs.field(init=False, default=None, repr=False)
    _calibrating: bool = attrs.field(init=False, default=False, repr=False)

    @property
    def calibrating(self) -> bool:
        """True between ``CALIBRATION_START`` and ``CALIBRATION_END`` (hooks attached)."""
        return self._calibrating

    def _model(self, state: State) -> torch.nn.Module:
        model = state.model
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"{self.lifecycle_label} needs a torch model: state.model is "
                f"{type(model).__name__}. To fix, pass model=... to Session.initialize.",
                owner=type(self).__name__,
                field="model",
                value=None,
            )
        return model

    def _refuse_state(self, problem: str) -> NoReturn:
        raise ConfigError(
            f"{self.lifecycle_label}.load_state_dict: {problem}. To fix, resume with the state "
            "this modifier saved, on the same model and recipe.",
            owner=type(self).__name__,
            field="state_dict",
            value=None,
        )

    def _check_layers(
        self, model: torch.nn.Module, found: Mapping[str, torch.nn.Module]
    ) -> dict[str, torch.nn.Linear]:
        """``found``, once every layer is a ``Linear`` whose weight no other module shares."""
        owner = type(self).__name__
        others = [name for name, layer in found.items() if not isinstance(layer, torch.nn.Linear)]
        if others:
            listed = ", ".join(f"{n} ({type(found[n]).__name__})" for n in others)
            raise ConfigError(
                f"{self.lifecycle_label} compresses torch.nn.Linear layers only; the targets "
                f"select {listed}. To fix, add those to ignore or narrow targets.",
                owner=owner,
                field="targets",
                value=others,
            )
        weights = {id(layer.weight): name for name, layer in found.items()}
        for other, module in model.named_modules(remove_duplicate=False):
            weight = module._parameters.get("weight")
            name = weights.get(id(weight)) if weight is not None else None
            if name is not None and found[name] is not module:
                raise ConfigError(
                    f"{self.lifecycle_label}: layer {name!r} shares its weight with "
                    f"{other!r} (tied weights, e.g. an lm_head tied to the embeddings), so "
                    f"compressing it in place would change {other!r} too. To fix, add "
                    f"{name!r} to ignore, or untie the weights before compressing.",
                    owner=owner,
                    field="targets",
                    value=name,
                )
        return {name: layer for name, layer in found.items() if isinstance(layer, torch.nn.Linear)}

    def _collect_inputs(
        self, layer: torch.nn.Module, update: Callable[[torch.Tensor], None]
    ) -> Handle:
        """A forward pre-hook on ``layer`` that passes its input to ``update``, less the
        positions the model's current ``attention_mask`` marks as padding (see
        :meth:`_watch_padding`)."""

        def collect(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs = args[0] if args else kwargs.get("input")
            if not isinstance(inputs, torch.Tensor):
                return
            padding = self._padding
            if padding is not None and tuple(inputs.shape[:-1]) == tuple(padding.shape):
                inputs = inputs[padding.to(inputs.device) != 0]
            update(inputs)

        return self.register_hook(layer, collect, "forward_pre", with_kwargs=True)

    def _watch_padding(self, model: torch.nn.Module) -> None:
        """Hooks on the model that keep the ``attention_mask`` of its current call."""

        def before(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            mask = kwargs.get("attention_mask")
            keep = isinstance(mask, torch.Tensor) and mask.dim() == 2
            self._padding = mask.detach() if keep else None  # type: ignore[union-attr]  # a tensor when keep

        def after(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._padding = None

        # gate=False: the mask must follow every call, even while hooks are disabled
        self._padding_handles = [
            self.register_hook(model, before, "forward_pre", gate=False, with_kwargs=True),
            self.register_hook(model, after, "forward", gate=False, always_call=True),
        ]

    def _drop_hook(self, name: str) -> None:
        """Remove the collecting hook of ``name`` (if any)."""
        handle = self._handles.pop(name, None)
        if handle is not None:
            self.remove_hooks([handle])

    def _stop_hooks(self) -> None:
        """Remove every collecting hook and the padding watch; calibration is over."""
        self.remove_hooks([*self._handles.values(), *self._padding_handles])
        self._handles, self._padding_handles, self._padding = {}, [], None
        self._calibrating = False

    def _warn_unfinished(self, what: str, left: list[str], total: int) -> None:
        """At finalize: warn that ``left`` (of ``total`` ``what``) were never done."""
        if left:
            _LOG.warning(
                "%s: finalized with %d of %d %s not done (%s): calibration did not run them "
                "to CALIBRATION_END. To fix, send CALIBRATION_START, run the calibration data "
                "through the model, then CALIBRATION_END before finalize.",
                self.lifecycle_label,
                len(left),
                total,
                what,
                ", ".join(left[:8]) + (", ..." if len(left) > 8 else ""),
            )


@attrs.define(eq=False)
class OneShotCompressionBase(CalibrationBase):
    """Collects each target layer's Hessian during calibration and compresses the layer.

    Subclasses say which layers are targets (:meth:`_resolve`), how one is
    compressed (:meth:`_compress`, which writes the weight in place and returns
    the layer's record) and how a record is reported (:meth:`_summary`).
    See the module docstring for the lifecycle.
    """

    _layers: dict[str, torch.nn.Linear] = attrs.field(init=False, factory=dict, repr=False)
    _accumulators: dict[str, HessianAccumulator] = attrs.field(init=False, factory=dict, repr=False)
    _records: dict[str, dict[str, Any]] = attrs.field(init=False, factory=dict, repr=False)

    # --- what a subclass provides ---------------------------------------------------------

    @abc.abstractmethod
    def _resolve(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The target layers of ``model``, in model order (checked to be ``Linear`` after).

        Raises:
            ConfigError: the targets select nothing, or a layer does not fit the arguments.
        """

    @abc.abstractmethod
    def _compress(self, name: str, layer: torch.nn.Linear, hessian: torch.Tensor) -> dict[str, Any]:
        """Compress ``layer`` in place for inputs whose Hessian is ``hessian`` (float64).

        Returns:
            the layer's record: plain values and tensors (it goes into checkpoints).
        """

    def _summary(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """What :meth:`report` shows of a record: every value but the tensors."""
        return {key: value for key, value in record.items() if not isinstance(value, torch.Tensor)}

    # --- views ------------------------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """The target layers, as resolved at initialize, in model order."""
        return list(self._layers)

    @property
    def compressed(self) -> list[str]:
        """The target layers compressed so far, in model order."""
        return [name for name in self._layers if name in self._records]

    def report(self) -> dict[str, dict[str, Any]]:
        """Per compressed layer, in model order: what was done, its loss and time.

        Every entry has ``loss`` (the solver's, see :mod:`modfsm.modifiers.solvers`),
        ``seconds`` (the solve) and ``samples`` (input vectors in its Hessian); the
        subclass adds its own (bits and group size; sparsity).
        """
        return {
            name: self._summary(self._records[name])
            for name in self._layers
            if name in self._records
        }  # fmt: skip

    # --- lifecycle hooks ----------------------------------------------------------------------

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        model = self._model(state)
        layers = self._check_layers(model, self._resolve(model))
        self._layers = layers
        self._accumulators, self._records, self._handles = {}, {}, {}
        self._calibrating = False
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        model = self._model(state)
        if not self._calibrating:
            self._watch_padding(model)
        for name, layer in self._layers.items():
            if name not in self._records and name not in self._handles:
                self._hook(name, layer)
        self._calibrating = True

    def on_sequential_epoch_end(
        self,
        state: State,
        event: Event,
        modules: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        waiting = [name for name in self._layers if name in self._accumulators]
        if modules is not None:
            inside = set(layers_inside(self._layers, modules))
            waiting = [name for name in waiting if name in inside]
        for name in waiting:
            if self._accumulators[name].count:
                self._compress_layer(name)

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        unseen = [
            name
            for name, accumulator in self._accumulators.items()
            if not accumulator.count
        ]  # fmt: skip
        if unseen:
            raise CalibrationError(
                f"{self.lifecycle_label}: {len(unseen)} target layer(s) received no input "
                f"during calibration, so they cannot be compressed: {', '.join(unseen)}. "
                "Nothing was compressed at CALIBRATION_END. To fix, make the calibration run "
                "these layers (a layer the forward pass skips, such as an expert no token "
                "reached, has no inputs), or add them to ignore.",
                problem="no samples",
            )
        for name in [n for n in self._layers if n in self._accumulators]:
            self._compress_layer(name)
        self._stop_calibrating()

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self._stop_calibrating()
        left = [name for name in self._layers if name not in self._records]
        self._warn_unfinished("target layers", left, len(self._layers))
        return True

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "calibrating": self._calibrating,
            "accumulators": {n: a.state_dict() for n, a in self._accumulators.items()},
            "records": {n: dict(r) for n, r in self._records.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        problem = ""
        if set(state_dict) != _STATE_KEYS:
            problem = f"its keys are {sorted(map(str, state_dict))}, expected {sorted(_STATE_KEYS)}"
        elif not isinstance(state_dict["calibrating"], bool):
            problem = f"calibrating is {state_dict['calibrating']!r}, not true or false"
        elif not isinstance(state_dict["accumulators"], Mapping) or not isinstance(
            state_dict["records"], Mapping
        ):
            problem = "accumulators and records must be dicts by layer name"
        if (
            not problem
            and not self.initialized
            and any((state_dict["calibrating"], state_dict["accumulators"], state_dict["records"]))
        ):
            problem = "it holds calibration state, but the modifier is not initialized"
        if problem:
            self._refuse_state(problem)
        if self.initialized:
            model = self._model(state)
            self._layers = self._check_layers(model, self._resolve(model))
        saved_records, saved_sums = state_dict["records"], state_dict["accumulators"]
        strangers = sorted(map(str, (set(saved_records) | set(saved_sums)) - set(self._layers)))
        if strangers:
            self._refuse_state(
                f"layers {strangers} are not target layers of this model ({self.layer_names})"
            )
        self.remove_hooks()
        self._handles, self._padding_handles, self._padding = {}, [], None
        self._records = {
            name: {
                key: value.to(self._layers[name].weight.device)
                if isinstance(value, torch.Tensor)
                else value
                for key, value in record.items()
            }
            for name, record in saved_records.items()
        }
        self._accumulators = {}
        for name, saved in saved_sums.items():
            accumulator = self._new_accumulator(self._layers[name])
            accumulator.load_state_dict(saved)
            self._accumulators[name] = accumulator
        self._calibrating = state_dict["calibrating"] and not self.finalized
        if self._calibrating:
            self._watch_padding(self._model(state))
            for name in self._accumulators:
                self._handles[name] = self._register_collector(name, self._layers[name])
        else:
            self._accumulators = {}

    # --- internals ------------------------------------------------------------------------------

    def _new_accumulator(self, layer: torch.nn.Linear) -> HessianAccumulator:
        return HessianAccumulator(layer.in_features, dtype=_ACCUMULATE, device=layer.weight.device)

    def _hook(self, name: str, layer: torch.nn.Linear) -> None:
        self._accumulators[name] = self._new_accumulator(layer)
        self._handles[name] = self._register_collector(name, layer)

    def _register_collector(self, name: str, layer: torch.nn.Linear) -> Handle:
        return self._collect_inputs(layer, self._accumulators[name].update)

    def _stop_calibrating(self) -> None:
        self._stop_hooks()
        self._accumulators = {}

    def _compress_layer(self, name: str) -> None:
        """Solve layer ``name`` from its accumulator; record it; drop the accumulator and hook."""
        accumulator, layer = self._accumulators[name], self._layers[name]
        hessian = accumulator.hessian().to(_SOLVE)
        began = time.perf_counter()
        try:
            with torch.no_grad():
                record = self._compress(name, layer, hessian)
        except HessianNotPositiveDefiniteError as error:
            raise HessianNotPositiveDefiniteError(
                f"{self.lifecycle_label}, layer {name!r}: {error}",
                dampening_frac=error.dampening_frac,
                column=error.column,
            ) from error
        except CalibrationError as error:
            raise CalibrationError(
                f"{self.lifecycle_label}, layer {name!r}: {error}", problem=error.problem
            ) from error
        record["seconds"] = time.perf_counter() - began
        record["samples"] = accumulator.count
        self._records[name] = record
        del self._accumulators[name]
        self._drop_hook(name)
        _LOG.info(
            "%s: compressed %s from %d input vectors in %.3f s (loss %.4g)",
            self.lifecycle_label,
            name,
            accumulator.count,
            record["seconds"],
            record.get("loss", float("nan")),
        )
