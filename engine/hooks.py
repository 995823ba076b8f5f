"""``HooksMixin``: torch hooks that can be disabled together and never outlive ``finalize``.

A modifier registers every torch hook through :meth:`HooksMixin.register_hook`;
the mixin keeps the handle, so :meth:`HooksMixin.remove_hooks` can remove them
all and the lifecycle does so when the modifier is finalized (the
``release_hooks`` hook of every ``finalize`` row in :mod:`engine.lifecycle`).

``HooksMixin.disable_hooks(keep=...)`` switches off every hook registered
through any subclass while the ``with`` block runs, except the handles in
``keep``. Blocks nest: a hook runs only if every active block keeps it, and
leaving an inner block restores the outer one. Hooks are switched off by the
wrapper modfsm registers, so torch still sees them (their handles stay valid).
The disabled state is process-wide, like the hooks themselves.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from engine.errors import ConfigError, ConfigTypeError

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

__all__ = ["HOOK_TYPES", "HooksMixin"]

#: hook type -> (what it attaches to: "module" or "tensor", the torch method that registers it)
HOOK_TYPES: Final = {
    "forward": ("module", "register_forward_hook"),
    "forward_pre": ("module", "register_forward_pre_hook"),
    "full_backward": ("module", "register_full_backward_hook"),
    "full_backward_pre": ("module", "register_full_backward_pre_hook"),
    "tensor": ("tensor", "register_hook"),
    "parameter": ("tensor", "register_hook"),
}

# One frozenset of kept handles per active ``disable_hooks`` block, outermost first.
_DISABLED: list[frozenset[RemovableHandle]] = []


class HooksMixin:
    """Register torch hooks through the object, disable them together, remove them all.

    The host class provides a ``_hooks`` attribute (``set`` or ``None``) to keep
    its handles; :class:`engine.modifier.Modifier` does.
    """

    __slots__ = ()
    _hooks: set[RemovableHandle] | None

    @classmethod
    @contextlib.contextmanager
    def disable_hooks(cls, keep: Iterable[RemovableHandle] = ()) -> Iterator[None]:
        """Switch off every hook registered through any ``HooksMixin``, except ``keep``.

        Works the same whichever subclass it is called on, and nests.
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
        **kwargs: Any,
    ) -> RemovableHandle:
        """Register ``hook`` on ``target`` and keep its handle.

        Args:
            target: a module (for ``forward``, ``forward_pre``, ``full_backward``,
                ``full_backward_pre``) or a tensor/parameter that requires grad
                (for ``tensor``/``parameter``).
            hook: the function torch will call.
            hook_type: one of :data:`HOOK_TYPES`.
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
        import torch  # here, not at import time: `import engine` stays light

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
        handle: RemovableHandle | None = None

        @functools.wraps(hook)
        def gated(*args: Any, **hook_kwargs: Any) -> Any:
            if _DISABLED and any(handle not in frame for frame in _DISABLED):
                return None
            return hook(*args, **hook_kwargs)

        handle = getattr(target, method)(gated, **kwargs)
        assert handle is not None  # torch's register_* methods always return a handle
        if self._hooks is None:
            # The host class provides the _hooks slot (Modifier declares it as a field).
            self._hooks = set()  # type: ignore[misc]
        self._hooks.add(handle)
        return handle

    def remove_hooks(self, handles: Iterable[RemovableHandle] | None = None) -> None:
        """Remove ``handles`` (any iterable), or every hook this object registered."""
        own = self._hooks if self._hooks is not None else set()
        chosen = set(own) if handles is None else set(handles)
        for handle in chosen:
            handle.remove()
        own -= chosen
