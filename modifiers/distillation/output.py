"""``OutputDistillationModifier``: train the model toward a teacher's layer outputs.

Inside its window, every batch the model (the *student*) is called on is also given
to ``state.teacher_model`` (under ``torch.no_grad``); the outputs of the target layers
of both are captured by forward hooks, transformed, compared, and at
``LOSS_CALCULATED`` the loss becomes::

    state.loss = orig_scale * loss + distill_scale * sum(comparison(student, teacher))

summed over the target pairs. The loop trains on the loss the session returns
(``session.loss_calculated(loss).loss``). Outside the window nothing is captured and
the teacher is not run.

Recipe arguments (the reference's names):

* ``targets`` — a layer name, ``"re:<pattern>"`` or type name matching layers of both
  models, or a list of them; a pair ``[student_name, teacher_name]`` names different
  layers in each. Both models must have as many matches, paired in model order.
  ``lm_head`` (or any last layer) compares the model's outputs.
* ``transforms`` — applied to both outputs first: ``"identity"`` (default),
  ``"softmax"`` or ``"log_softmax"`` (over the last dimension), or a list of them;
  ``transforms_args`` — ``{"temperature": T}`` divides by ``T`` before a softmax.
* ``comparison`` — ``"kl_divergence"`` (default; ``comparison_args``: ``temperature``,
  default 1: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` averaged over positions),
  ``"square_head"`` (``mean((s - t)²) / mean(t²)``, Kurtic et al. 2023),
  ``"cosine_similarity"`` (``mean(1 - cos(s, t))`` over the last dimension) or
  ``"mse"``.
* ``orig_scale``, ``distill_scale`` — the weights of the task and distillation losses.
* ``projection``, ``projection_args``, ``offload_layer_output`` — accepted for the
  reference's recipes with their defaults only (``None``, ``None``, ``False``); any
  other value is refused at construction, naming the field.

An output that is a tuple is read through its first element, and an output object
(``transformers``' ``ModelOutput``) through its ``logits``, else its first tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import torch

from modfsm.engine import ConfigError, ConfigTypeError, Event, EventType, Modifier, State, handles
from modfsm.engine.runtime.hooks import output_tensor

__all__ = ["COMPARISONS", "TRANSFORMS", "OutputDistillationModifier"]

Comparison = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]


def _temperature(owner: str, arguments: Mapping[str, Any]) -> float:
    value = arguments.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"{owner}: temperature must be a number > 0, got {value!r}. To fix, write e.g. "
            "temperature: 2.0.",
            owner="OutputDistillationModifier",
            field="temperature",
            value=value,
        )
    return float(value)


def _kl_divergence(
    student: torch.Tensor, teacher: torch.Tensor, arguments: Mapping[str, Any]
) -> torch.Tensor:
    temperature = _temperature("comparison_args", arguments)
    log_p_student = torch.log_softmax(student / temperature, dim=-1)
    log_p_teacher = torch.log_softmax(teacher / temperature, dim=-1)
    per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return temperature**2 * per_position.mean()


def _square_head(
    student: torch.Tensor, teacher: torch.Tensor, arguments: Mapping[str, Any]
) -> torch.Tensor:
    scale = teacher.pow(2).mean()
    error = (student - teacher).pow(2).mean()
    return error / scale if scale > 0 else error


def _cosine(
    student: torch.Tensor, teacher: torch.Tensor, arguments: Mapping[str, Any]
) -> torch.Tensor:
    return (1 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()


def _mse(
    student: torch.Tensor, teacher: torch.Tensor, arguments: Mapping[str, Any]
) -> torch.Tensor:
    return (student - teacher).pow(2).mean()


#: comparison name -> (student output, teacher output, comparison_args) -> a scalar loss
COMPARISONS: Final[dict[str, Comparison]] = {
    "kl_divergence": _kl_divergence,
    "square_head": _square_head,
    "cosine_similarity": _cosine,
    "mse": _mse,
}

#: transform name -> (output, transforms_args) -> output
TRANSFORMS: Final[dict[str, Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]]] = {
    "identity": lambda output, arguments: output,
    "softmax": lambda output, arguments: torch.softmax(
        output / _temperature("transforms_args", arguments), dim=-1
    ),
    "log_softmax": lambda output, arguments: torch.log_softmax(
        output / _temperature("transforms_args", arguments), dim=-1
    ),
}


def _names(owner: str, field: str, value: Any, known: Mapping[str, Any]) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(n in known for n in names):
        raise ConfigError(
            f"{owner}.{field} must be one of {sorted(known)} or a list of them, got {value!r}. "
            f"To fix, write e.g. {field}: {next(iter(known))}.",
            owner=owner,
            field=field,
            value=value,
        )
    return list(names)


def _check_targets(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    entries = [value] if isinstance(value, str) else value
    good = isinstance(entries, list | tuple) and bool(entries)
    for entry in entries if good else ():
        pair = isinstance(entry, list | tuple) and len(entry) == 2
        names = list(entry) if pair else [entry]
        if not all(isinstance(n, str) and n for n in names):
            good = False
        for name in names if good else ():
            if name.startswith("re:"):
                try:
                    re.compile(name[3:])
                except re.error as error:
                    raise ConfigError(
                        f"OutputDistillationModifier.targets: {name!r} is not a valid regular "
                        f"expression ({error}). To fix, correct the pattern after 're:'.",
                        owner="OutputDistillationModifier",
                        field="targets",
                        value=name,
                    ) from None
    if not good:
        raise ConfigTypeError(
            f"OutputDistillationModifier.targets must be a layer name, a list of names, or of "
            f"[student_name, teacher_name] pairs, got {value!r}. To fix, write e.g. lm_head "
            "or ['re:model.layers.\\d+$'].",
            owner="OutputDistillationModifier",
            field="targets",
            value=value,
        )


def _check_scale(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e30:
        raise ConfigError(
            f"OutputDistillationModifier.{attribute.name} must be a finite number >= 0, got "
            f"{value!r}. To fix, write e.g. {attribute.name}: 1.0.",
            owner="OutputDistillationModifier",
            field=attribute.name,
            value=value,
        )


def _check_default(default: Any) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value != default or type(value) is not type(default):
            raise ConfigError(
                f"OutputDistillationModifier.{attribute.name}={value!r} is not supported by "
                f"modfsm (only the default, {default!r}). To fix, remove {attribute.name} "
                "from the recipe.",
                owner="OutputDistillationModifier",
                field=attribute.name,
                value=value,
            )

    return check


def _check_transforms(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _names("OutputDistillationModifier", attribute.name, value, TRANSFORMS)


def _check_comparison(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or value not in COMPARISONS:
        raise ConfigError(
            f"OutputDistillationModifier.comparison must be one of {sorted(COMPARISONS)}, got "
            f"{value!r}. To fix, write e.g. comparison: kl_divergence.",
            owner="OutputDistillationModifier",
            field="comparison",
            value=value,
        )


def _check_arguments(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    entries = value if isinstance(value, list) else [value]
    for entry in entries:
        if entry is not None and not (
            isinstance(entry, dict) and all(isinstance(key, str) for key in entry)
        ):
            raise ConfigTypeError(
                f"OutputDistillationModifier.{attribute.name} must be a mapping of argument "
                f"names (or a list of them, one per transform), got {value!r}. To fix, write "
                "e.g. {temperature: 2.0}.",
                owner="OutputDistillationModifier",
                field=attribute.name,
                value=value,
            )
        _temperature(attribute.name, entry or {})


@attrs.define(eq=False)
class OutputDistillationModifier(Modifier):
    """Knowledge distillation on the outputs of target layers (see the module docstring)."""

    targets: str | list[Any] = attrs.field(kw_only=True, validator=_check_targets)
    transforms: str | list[str] = attrs.field(default="identity", validator=_check_transforms)
    transforms_args: dict[str, Any] | list[dict[str, Any]] | None = attrs.field(
        default=None, validator=_check_arguments
    )
    comparison: str = attrs.field(default="kl_divergence", validator=_check_comparison)
    comparison_args: dict[str, Any] | None = attrs.field(default=None, validator=_check_arguments)
    orig_scale: float = attrs.field(default=1.0, validator=_check_scale)
    distill_scale: float = attrs.field(default=1.0, validator=_check_scale)
    projection: str | None = attrs.field(default=None, validator=_check_default(None))
    projection_args: dict[str, Any] | None = attrs.field(
        default=None, validator=_check_default(None)
    )
    offload_layer_output: bool = attrs.field(default=False, validator=_check_default(False))
    _pairs: list[tuple[str, torch.nn.Module, torch.nn.Module]] = attrs.field(
        init=False, factory=list, repr=False
    )
    _captured: dict[tuple[str, str], Any] = attrs.field(init=False, factory=dict, repr=False)

    @property
    def distilling(self) -> bool:
        """True inside the window (read from the lifecycle state, so a resumed run agrees)."""
        flags = self._lc.flags
        return flags["started"] and not flags["ended"] and not flags["finalized"]

    # --- lifecycle -----------------------------------------------------------------------

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._bind(state)
        return True

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        """Nothing is saved; a resumed modifier that is initialized and not yet finalized
        pairs the layers and hooks the models again (no lifecycle hook runs on resume)."""
        super().load_state_dict(state_dict, state)
        if self.initialized and not self.finalized:
            self._bind(state)

    def _bind(self, state: State) -> None:
        """Pair the target layers of the model and the teacher and hook them."""
        student, teacher = state.model, state.teacher_model
        for name, model in (("model", student), ("teacher_model", teacher)):
            if not isinstance(model, torch.nn.Module):
                raise ConfigError(
                    f"{self.lifecycle_label} needs state.{name} to be a torch module, got "
                    f"{type(model).__name__}. To fix, pass {name}=... to Session.initialize.",
                    owner=type(self).__name__,
                    field=name,
                    value=type(model).__name__,
                )
        assert isinstance(student, torch.nn.Module)
        assert isinstance(teacher, torch.nn.Module)
        self._pairs = []
        entries = [self.targets] if isinstance(self.targets, str) else self.targets
        for entry in entries:
            ours, theirs = (entry, entry) if isinstance(entry, str) else entry
            found = _matching(self.lifecycle_label, student, ours, "model")
            matched = _matching(self.lifecycle_label, teacher, theirs, "teacher_model")
            if len(found) != len(matched):
                raise ConfigError(
                    f"{self.lifecycle_label}: target {entry!r} matches {len(found)} module(s) "
                    f"of the model ({', '.join(found)}) but {len(matched)} of the teacher "
                    f"({', '.join(matched)}). To fix, name layers that pair one to one (a "
                    "[student_name, teacher_name] pair can name different layers).",
                    owner=type(self).__name__,
                    field="targets",
                    value=entry,
                )
            self._pairs += list(zip(found, found.values(), matched.values(), strict=True))
        for name, student_layer, teacher_layer in self._pairs:
            self.register_hook(student_layer, self._keeper(name, "model"), "forward")
            self.register_hook(teacher_layer, self._keeper(name, "teacher"), "forward")
        self.register_hook(student, self._run_teacher(teacher), "forward", with_kwargs=True)

    @handles(EventType.BATCH_START, EventType.LOSS_CALCULATED)
    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.type_ is EventType.BATCH_START:
            self._captured = {}  # nothing of an earlier batch is compared with this one
            return
        if state.loss is None:
            raise ConfigError(
                f"{self.lifecycle_label}: LOSS_CALCULATED came without a loss. To fix, call "
                "session.loss_calculated(loss).",
                owner=type(self).__name__,
                field="loss",
                value=None,
            )
        state.loss = self.orig_scale * state.loss + self.distill_scale * self.distillation_loss()
        self._captured = {}

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self._captured = {}

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self._captured = {}
        return True

    # --- the loss ------------------------------------------------------------------------

    def distillation_loss(self) -> torch.Tensor:
        """The comparison summed over the target pairs, from this batch's captured outputs.

        Raises:
            ConfigError: a target's output was not captured since the batch began (the
                model was not called between ``batch_start`` and ``loss_calculated``).
        """
        names = [self.transforms] if isinstance(self.transforms, str) else self.transforms
        per_transform = self.transforms_args
        if not isinstance(per_transform, list):
            per_transform = [per_transform or {}] * len(names)
        compare = COMPARISONS[self.comparison]
        total: torch.Tensor | None = None
        for name, _, _ in self._pairs:
            outputs = []
            for side in ("model", "teacher"):
                if (name, side) not in self._captured:
                    raise ConfigError(
                        f"{self.lifecycle_label}: no output of {side} layer {name!r} was "
                        "captured in this batch. To fix, call the model on the batch between "
                        "session.batch_start and session.loss_calculated.",
                        owner=type(self).__name__,
                        field="targets",
                        value=name,
                    )
                output = self._captured[(name, side)]
                for transform, arguments in zip(names, per_transform, strict=False):
                    output = TRANSFORMS[transform](output, arguments or {})
                outputs.append(output)
            value = compare(
                outputs[0], outputs[1].to(outputs[0].device), self.comparison_args or {}
            )
            total = value if total is None else total + value
        assert total is not None  # initialize found at least one pair
        return total

    # --- hooks ---------------------------------------------------------------------------

    def _keeper(self, name: str, side: str) -> Callable[..., None]:
        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            if not self.distilling:
                return
            tensor = output_tensor(output)
            if tensor is None:
                raise ConfigError(
                    f"{self.lifecycle_label}: the output of {side} layer {name!r} holds no "
                    f"tensor ({type(output).__name__}). To fix, target a layer that returns "
                    "a tensor.",
                    owner=type(self).__name__,
                    field="targets",
                    value=name,
                )
            self._captured[(name, side)] = tensor

        return keep

    def _run_teacher(self, teacher: torch.nn.Module) -> Callable[..., None]:
        def run(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if self.distilling:
                with torch.no_grad():
                    teacher(*args, **kwargs)

        return run


def _matching(
    label: str, model: torch.nn.Module, target: str, which: str
) -> dict[str, torch.nn.Module]:
    """The modules of ``model`` that ``target`` names (exact name, ``re:`` pattern over the
    whole name, or type name), in model order."""
    if target.startswith("re:"):
        pattern = re.compile(target[3:])
        found = {n: m for n, m in model.named_modules() if pattern.fullmatch(n)}
    else:
        found = {n: m for n, m in model.named_modules() if target in (n, type(m).__name__)}
    found.pop("", None)  # the model itself is not one of its layers
    if not found:
        names = ", ".join(n for n, _ in model.named_modules() if n) or "none"
        raise ConfigError(
            f"{label}: target {target!r} matches no module of the {which}. Its modules are: "
            f"{names}. To fix, use one of those names, a type name or a 're:' pattern.",
            owner="OutputDistillationModifier",
            field="targets",
            value=target,
        )
    return found
