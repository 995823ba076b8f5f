"""``HooksMixin``: torch hooks that can be disabled together and never outlive ``finalize``.

A modifier registers every torch hook through :meth:`HooksMixin.register_hook`;
the mixin keeps the handle, so :meth:`HooksMixin.remove_hooks` can remove them
all and the lifecycle does so when the modifier is finalized (the
``release_hooks`` hook of every ``finalize`` row in :mod:`modfsm.engine.model.lifecycle`).

``HooksMixin.disable_hooks(keep=...)`` switches off every hook registered
through any subclass while the ``with`` block runs, except the handles in
``keep``. Blocks nest: inside nested blocks the kept handles are the union of
their ``keep`` arguments (as the reference documents), and leaving an inner
block restores the outer one. A hook registered with ``gate=False`` (cleanup
that must pair with another hook) runs even inside a block. Hooks are switched off by the
wrapper modfsm registers, so torch still sees them (their handles stay valid).
The disabled state is process-wide, like the hooks themselves.

One kind is modfsm's own rather than torch's: ``forward_wrap`` replaces a
module's ``forward`` (an instance attribute, as ``compressed-tensors`` does for
quantized forwards) by ``hook(module, forward, *args, **kwargs)``, which calls
``forward`` itself. It does in one call what a ``forward_pre`` hook and a
``forward`` hook do in two, without torch's hook path in ``Module.__call__``
(``benchmarks/README.md``: 10-40 µs a step for the quantization hooks of the
default recipe). Its handle (:class:`ForwardWrapHandle`) gives the module its
``forward`` back, and it is gated and removed like the others.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MethodType
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

__all__ = ["HOOK_TYPES", "ForwardWrapHandle", "Handle", "HooksMixin", "output_tensor"]

#: hook type -> (what it attaches to: "module" or "tensor", the torch method that registers it)
HOOK_TYPES: Final = {
    "forward": ("module", "register_forward_hook"),
    "forward_pre": ("module", "register_forward_pre_hook"),
    "full_backward": ("module", "register_full_backward_hook"),
    "full_backward_pre": ("module", "register_full_backward_pre_hook"),
    "tensor": ("tensor", "register_hook"),
    "parameter": ("tensor", "register_hook"),
    "forward_wrap": ("module", None),  # modfsm's own: replaces module.forward
}


class ForwardWrapHandle:
    """The handle of a ``forward_wrap`` hook: :meth:`remove` gives the module its forward back.

    If another wrapper was installed over this one since, removing this one
    leaves that one in place and makes this one pass calls straight through.
    """

    __slots__ = ("id", "installed", "module", "previous", "removed")
    _ids: Final = itertools.count()

    def __init__(self, module: torch.nn.Module, previous: Any) -> None:
        self.id = next(self._ids)
        self.module = module
        self.previous = previous  # the instance's own forward before, or None
        self.installed: Any = None
        self.removed = False

    def remove(self) -> None:
        """Restore the module's previous forward (idempotent)."""
        if self.removed:
            return
        self.removed = True
        namespace = self.module.__dict__
        if namespace.get("forward") is self.installed:
            if self.previous is None:
                del namespace["forward"]
            else:
                namespace["forward"] = self.previous

    def __repr__(self) -> str:
        return f"<ForwardWrapHandle {self.id} on {type(self.module).__name__}>"


if TYPE_CHECKING:
    Handle: TypeAlias = RemovableHandle | ForwardWrapHandle
else:
    Handle = Any

# One frozenset of kept handles per active ``disable_hooks`` block, outermost first.
_DISABLED: list[frozenset[Handle]] = []


class HooksMixin:
    """Register torch hooks through the object, disable them together, remove them all.

    Works on any class. The handles are kept in the object's ``_hooks`` attribute,
    created by the first :meth:`register_hook` (``None`` or absent until then);
    :class:`modfsm.engine.runtime.modifier.Modifier` declares it as a field. A class with
    ``__slots__`` and no ``__dict__`` must declare a ``_hooks`` slot.
    """

    __slots__ = ()
    _hooks: set[Handle] | None

    @classmethod
    @contextlib.contextmanager
    def disable_hooks(cls, keep: Iterable[Handle] = ()) -> Iterator[None]:
        """Switch off every hook registered through any ``HooksMixin``, except ``keep``.

        Works the same whichever subclass it is called on, and nests: inside
        nested blocks a hook runs if any of them keeps it (the union of their
        ``keep`` arguments). Hooks registered with ``gate=False`` always run.
        """
        frame = frozenset(keep)
        _DISABLED.append(frame)
        try:
            yield
        finally:
            # Remove this block's own frame even if blocks exit out of order.
            for position in range(len(_DISABLED) - 1, -1, -1):
                if _DISABLED[position] is frame:
                    del _DISABLED[position]
                    break

    @staticmethod
    def hooks_disabled() -> bool:
        """True while any ``disable_hooks`` block is active."""
        return bool(_DISABLED)

    def register_hook(
        self,
        target: torch.nn.Module | torch.Tensor,
        hook: Callable[..., Any],
        hook_type: str,
        *,
        gate: bool = True,
        **kwargs: Any,
    ) -> Handle:
        """Register ``hook`` on ``target`` and keep its handle.

        Args:
            target: a module (for ``forward``, ``forward_pre``, ``full_backward``,
                ``full_backward_pre``, ``forward_wrap``) or a tensor/parameter that
                requires grad (for ``tensor``/``parameter``).
            hook: the function torch will call; for ``forward_wrap``, the module's
                new forward, called as ``hook(module, forward, *args, **kwargs)``
                where ``forward`` is the one it replaces (call it to run the module).
            hook_type: one of :data:`HOOK_TYPES`.
            gate: False registers a hook that ``disable_hooks`` does not switch off
                (cleanup that must always follow another hook); it is still
                removed with the others.
            **kwargs: passed to torch's registration method (``prepend``,
                ``with_kwargs``, ...).

        Returns:
            torch's handle; pass it to :meth:`remove_hooks` or ``disable_hooks(keep=...)``.
        """
        owner = type(self).__name__
        if hook_type not in HOOK_TYPES:
            raise ConfigError(
                f"{owner}.register_hook: unknown hook_type {hook_type!r}. Known types: "
                f"{', '.join(HOOK_TYPES)}. To fix, pass one of those.",
                owner=owner,
                field="hook_type",
                value=hook_type,
            )
        import torch  # here, not at import time: `import modfsm.engine` stays light

        kind, method = HOOK_TYPES[hook_type]
        wanted = torch.nn.Module if kind == "module" else torch.Tensor
        if not isinstance(target, wanted):
            raise ConfigTypeError(
                f"{owner}.register_hook: a {hook_type!r} hook needs a torch "
                f"{'Module' if kind == 'module' else 'Tensor'}, got {type(target).__name__}. "
                f"To fix, pass a {'module' if kind == 'module' else 'tensor or parameter'}.",
                owner=owner,
                field="target",
                value=target,
            )
        if isinstance(target, torch.Tensor) and not target.requires_grad:
            raise ConfigError(
                f"{owner}.register_hook: a {hook_type!r} hook needs a tensor that requires "
                "grad; this one does not. To fix, hook a parameter (or call "
                "requires_grad_() first).",
                owner=owner,
                field="target",
                value=target,
            )
        own = self._own_hooks(create=True)
        assert own is not None  # create=True always gives a set
        if method is None:  # forward_wrap
            if kwargs:
                raise ConfigError(
                    f"{owner}.register_hook: a 'forward_wrap' hook takes no torch options, "
                    f"got {sorted(kwargs)}. To fix, drop them.",
                    owner=owner,
                    field="kwargs",
                    value=dict(kwargs),
                )
            wrap = _wrap_forward(target, hook, gate)  # type: ignore[arg-type]  # a Module here
            own.add(wrap)
            return wrap
        handle: RemovableHandle | None = None

        @functools.wraps(hook)
        def gated(*args: Any, **hook_kwargs: Any) -> Any:
            if _DISABLED and not any(handle in frame for frame in _DISABLED):
                return None
            return hook(*args, **hook_kwargs)

        handle = getattr(target, method)(gated if gate else hook, **kwargs)
        assert handle is not None  # torch's register_* methods always return a handle
        own.add(handle)
        return handle

    def remove_hooks(self, handles: Iterable[Handle] | None = None) -> None:
        """Remove ``handles`` (any iterable), or every hook this object registered."""
        own = self._own_hooks(create=False)
        if own is None:
            own = set()
        chosen = set(own) if handles is None else set(handles)
        for handle in chosen:
            handle.remove()
        own -= chosen

    def _own_hooks(self, *, create: bool) -> set[Handle] | None:
        """The object's handle set; with ``create``, made on first use."""
        own: set[Handle] | None = getattr(self, "_hooks", None)
        if own is None and create:
            own = set()
            try:
                # Modifier declares _hooks as a field; any other class gets an attribute.
                object.__setattr__(self, "_hooks", own)
            except AttributeError:
                owner = type(self).__name__
                raise ConfigTypeError(
                    f"{owner}.register_hook: {owner} has __slots__ without a '_hooks' slot, "
                    "so it cannot keep its hook handles. To fix, add '_hooks' to its "
                    "__slots__ (or give it a __dict__).",
                    owner=owner,
                    field="_hooks",
                    value=None,
                ) from None
        return own


def _wrap_forward(
    module: torch.nn.Module, hook: Callable[..., Any], gate: bool
) -> ForwardWrapHandle:
    """Install ``hook`` as ``module.forward``; see the module docstring."""
    previous = module.__dict__.get("forward")
    handle = ForwardWrapHandle(module, previous)
    if previous is None:
        original: Callable[..., Any] = type(module).forward
    elif isinstance(previous, MethodType):
        original = previous.__func__  # rebound to the module called, as after a deepcopy
    else:

        def original(module: Any, *args: Any, **kwargs: Any) -> Any:
            return previous(*args, **kwargs)

    def forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if handle.removed or (_DISABLED and gate and not any(handle in f for f in _DISABLED)):
            return original(module, *args, **kwargs)
        return hook(module, MethodType(original, module), *args, **kwargs)

    handle.installed = MethodType(functools.wraps(original)(forward), module)
    module.__dict__["forward"] = handle.installed
    return handle


def output_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module's output stands for: the output itself, an output object's
    ``logits`` (transformers' ``ModelOutput``), or the first tensor found in a tuple, list,
    mapping or output object; None if it holds none."""
    import torch  # here: importing the engine does not import torch

    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    items: Any = output
    if hasattr(output, "to_tuple"):
        items = output.to_tuple()
    elif isinstance(output, Mapping):
        items = list(output.values())
    if isinstance(items, list | tuple):
        for item in items:
            found = output_tensor(item)
            if found is not None:
                return found
    return None
