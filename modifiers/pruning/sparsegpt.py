"""``SparseGPTModifier``: one-shot SparseGPT pruning from calibration inputs.

The reference's recipe shape (llm-compressor 0.14, ``modifiers/pruning/sparsegpt``
and its ``SparsityModifierBase``)::

    oneshot_stage:
      obcq_modifiers:
        SparseGPTModifier:
          sparsity: 0.5
          mask_structure: "2:4"
          targets: ["re:model.layers.\\\\d+$"]
          ignore: ["re:.*lm_head"]

``targets`` name the *blocks* whose layers are pruned, as the reference reads
them: each target selects modules (a decoder layer by ``re:`` pattern or type
name such as ``LlamaDecoderLayer``, or layers themselves: ``Linear``,
``__ALL_PRUNABLE__``; :func:`modfsm.modifiers.targets.select_modules`), and the
modifier prunes the prunable layers inside each (``Linear``, ``Conv1d/2d/3d``,
the module itself included) whose full name ``ignore`` does not match. Only
``Linear`` layers are supported: a convolution inside a target is refused at
initialize, naming it (add it to ignore). A layer named ``...lm_head`` is pruned
if selected, with a logged warning, as the reference warns.

Each layer's Hessian is collected during calibration and the layer is pruned
by :func:`~modfsm.modifiers.solvers.sparsegpt_prune` when the pipeline says its
block is done (``SEQUENTIAL_EPOCH_END``) or at ``CALIBRATION_END``
(:mod:`modfsm.modifiers.calibration` has the lifecycle); the pruned weight is
written in place.

Arguments, against llm-compressor 0.14:

* ``sparsity``: the fraction pruned, in [0, 1); or a list, one per module the
  targets select, in model order (the reference's list form; their count must
  match). With ``mask_structure`` ``N:M`` it must be ``N/M`` (unset: ``N/M``);
  unstructured pruning needs it.
* ``mask_structure``: ``"0:0"`` (unstructured, default) or ``"N:M"``: ``N``
  pruned of every ``M`` consecutive inputs (``"2:4"``); the layers' inputs
  must be a multiple of ``M``.
* ``targets`` (default ``Linear``, as 0.14), ``ignore``, ``block_size`` (128),
  ``dampening_frac`` (0.01).
* Accepted for older recipes, changing nothing: ``sequential_update`` (0.14
  forces it true), ``sequential_targets`` (kept for the pipeline, as
  llm-compressor before 0.7 read them from here), ``offload_hessians: false``,
  ``preserve_sparsity_mask: false``.
* Refused: ``sparsity_profile: owl``, ``owl_m``, ``owl_lmbda`` (OWL's
  layer-wise sparsities are not implemented: give the list form instead),
  ``preserve_sparsity_mask: true`` (not implemented: weights already zero sort
  first, so they are pruned first unless the corrections move them),
  ``offload_hessians: true``.

:meth:`SparseGPTModifier.report` gives each layer's pruned fraction (exact:
``round(sparsity * size)`` unstructured, ``N`` of every ``M`` for N:M).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import attrs
import torch

from modfsm.engine import ConfigError
from modfsm.engine.kernel.validate import check_int
from modfsm.modifiers.calibration import (
    OneShotCompressionBase,
    check_dampening_frac,
    refuse_unless,
)
from modfsm.modifiers.solvers import parse_mask_structure, sparsegpt_prune
from modfsm.modifiers.targets import (
    PRUNABLE_TYPES,
    as_names,
    check_names,
    check_target_names,
    matches_any,
    select_modules,
)

__all__ = ["SparseGPTModifier"]

_OWNER: Final = "SparseGPTModifier"
_LOG: Final = logging.getLogger("modfsm")


def _check_sparsity(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    values = list(value) if isinstance(value, list | tuple) else [value]
    fractions = [
        isinstance(item, int | float) and not isinstance(item, bool) and 0 <= item < 1
        for item in values
    ]
    if not values or not all(fractions):
        raise ConfigError(
            f"{_OWNER}.sparsity must be a fraction in [0, 1) or a non-empty list of them "
            f"(one per target), got {value!r}. To fix, write e.g. sparsity: 0.5.",
            owner=_OWNER,
            field="sparsity",
            value=value,
        )


def _check_structure(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    try:
        parse_mask_structure(value)
    except ConfigError:
        raise ConfigError(
            f"{_OWNER}.mask_structure {value!r} is not '0:0' (unstructured) or 'N:M' with "
            "0 < N < M (N pruned of every M inputs). To fix, write e.g. '0:0' or '2:4'.",
            owner=_OWNER,
            field="mask_structure",
            value=value,
        ) from None


def _check_block_size(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_int(_OWNER, attribute.name, value, minimum=1)


def _check_dampening(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_dampening_frac(_OWNER, attribute.name, value)


def _check_optional_names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_names(_OWNER, attribute.name, value)


def _check_optional_flag(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(
            f"{_OWNER}.{attribute.name} must be true or false, got {value!r}.",
            owner=_OWNER,
            field=attribute.name,
            value=value,
        )


@attrs.define(eq=False)
class SparseGPTModifier(OneShotCompressionBase):
    """Prune the ``Linear`` layers inside the target blocks by SparseGPT, once.

    See the module docstring for the arguments and what each changes.

    Attributes:
        sparsity: the fraction pruned, or one per selected module.
        mask_structure: ``"0:0"`` or ``"N:M"`` (``N`` pruned of every ``M``).
        targets: the blocks (or layers) whose layers are pruned.
        ignore: layers to leave dense (matched against their full names).
        block_size: columns per block (the unstructured mask is chosen per block).
        dampening_frac: added to the Hessian's diagonal, as a fraction of its mean.
        sequential_targets: the blocks a sequential pipeline should run one at a time
            (read by the pipeline).
    """

    sparsity: float | list[float] | None = attrs.field(default=None, validator=_check_sparsity)
    mask_structure: str = attrs.field(default="0:0", validator=_check_structure)
    targets: str | list[str] = attrs.field(default="Linear", validator=check_target_names)
    ignore: str | list[str] = attrs.field(factory=list, validator=check_target_names)
    block_size: int = attrs.field(default=128, validator=_check_block_size)
    dampening_frac: float = attrs.field(default=0.01, validator=_check_dampening)
    sequential_update: bool | None = attrs.field(default=False, validator=_check_optional_flag)
    sequential_targets: str | list[str] | None = attrs.field(
        default=None, validator=_check_optional_names
    )
    sparsity_profile: str | None = None
    owl_m: int | None = None
    owl_lmbda: float | None = None
    preserve_sparsity_mask: bool = False
    offload_hessians: bool = False
    _sparsities: dict[str, float] = attrs.field(init=False, factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        owl = "leave it out: OWL's layer-wise sparsities are not implemented (give sparsity " \
            "as a list, one per target, instead)"  # fmt: skip
        refuse_unless(_OWNER, "sparsity_profile", self.sparsity_profile, (None,), owl)
        refuse_unless(_OWNER, "owl_m", self.owl_m, (None,), owl)
        refuse_unless(_OWNER, "owl_lmbda", self.owl_lmbda, (None,), owl)
        refuse_unless(
            _OWNER, "preserve_sparsity_mask", self.preserve_sparsity_mask, (False,),
            "leave it false: keeping a previous mask is not implemented (weights already zero "
            "are pruned first unless the corrections move them)",
        )  # fmt: skip
        refuse_unless(
            _OWNER, "offload_hessians", self.offload_hessians, (False,),
            "leave it false: the Hessians stay on each layer's device (one block's worth at a "
            "time with a sequential pipeline)",
        )  # fmt: skip
        structure = parse_mask_structure(self.mask_structure)
        if self.sparsity is None:
            if structure is None:
                raise ConfigError(
                    f"{_OWNER}.sparsity is required for unstructured pruning "
                    "(mask_structure '0:0'). To fix, write e.g. sparsity: 0.5.",
                    owner=_OWNER,
                    field="sparsity",
                    value=None,
                )
            return
        if structure is not None:
            pruned, group = structure
            values = self.sparsity if isinstance(self.sparsity, list | tuple) else [self.sparsity]
            if any(abs(value - pruned / group) > 1e-9 for value in values):
                raise ConfigError(
                    f"{_OWNER}: mask_structure {self.mask_structure!r} prunes {pruned} of every "
                    f"{group} weights (sparsity {pruned / group:g}), but sparsity="
                    f"{self.sparsity!r}. To fix, write sparsity: {pruned / group:g} (or leave it "
                    "out), or mask_structure: '0:0' for unstructured pruning.",
                    owner=_OWNER,
                    field="sparsity",
                    value=self.sparsity,
                )

    # --- views ------------------------------------------------------------------------------

    @property
    def sparsities(self) -> dict[str, float]:
        """The sparsity each target layer is pruned to, resolved at initialize."""
        return dict(self._sparsities)

    # --- what the base class asks for ---------------------------------------------------------

    def _resolve(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        blocks = select_modules(_OWNER, model, as_names(self.targets))
        sparsity = self.sparsity
        if isinstance(sparsity, list | tuple) and len(sparsity) != len(blocks):
            raise ConfigError(
                f"{self.lifecycle_label}: sparsity lists {len(sparsity)} values, but the "
                f"targets select {len(blocks)} modules ({', '.join(list(blocks)[:6])}"
                f"{', ...' if len(blocks) > 6 else ''}). To fix, give one sparsity per "
                "selected module, in model order, or a single number.",
                owner=_OWNER,
                field="sparsity",
                value=sparsity,
            )
        ignore = as_names(self.ignore)
        found: dict[str, torch.nn.Module] = {}
        sparsities: dict[str, float] = {}
        selected: dict[str, torch.nn.Module] = {}
        for position, (block_name, block) in enumerate(blocks.items()):
            if isinstance(sparsity, list | tuple):
                share = float(sparsity[position])
            elif sparsity is None:
                structure = parse_mask_structure(self.mask_structure)
                assert structure is not None, "unstructured pruning needs sparsity (checked)"
                share = structure[0] / structure[1]
            else:
                share = float(sparsity)
            for inner, module in block.named_modules():
                name = f"{block_name}.{inner}" if inner else block_name
                prunable = isinstance(module, torch.nn.Linear) or (
                    type(module).__name__ in PRUNABLE_TYPES
                )
                if not prunable or name in sparsities:
                    continue
                selected[name] = module
                if matches_any(ignore, name, module):
                    continue
                found[name], sparsities[name] = module, share
        if not found:
            listed = ", ".join(selected) or "none"
            raise ConfigError(
                f"{self.lifecycle_label}: the targets {as_names(self.targets)} select no "
                f"prunable layer that ignore={ignore!r} leaves (layers inside them: {listed}). "
                "To fix, target the blocks that hold Linear layers (e.g. "
                "'re:model.layers.\\d+$'), or narrow ignore.",
                owner=_OWNER,
                field="targets",
                value=self.targets,
            )
        order = {name: index for index, name in enumerate(dict(model.named_modules()))}
        found = dict(sorted(found.items(), key=lambda item: order.get(item[0], len(order))))
        structure = parse_mask_structure(self.mask_structure)
        for name, layer in found.items():
            weight = getattr(layer, "weight", None)
            width = weight[0].numel() if isinstance(weight, torch.Tensor) else 0
            if structure is not None and width % structure[1]:
                raise ConfigError(
                    f"{self.lifecycle_label}: layer {name!r} has {width} inputs, not a multiple "
                    f"of M={structure[1]} (mask_structure {self.mask_structure!r}). To fix, add "
                    f"{name!r} to ignore, or use another structure.",
                    owner=_OWNER,
                    field="mask_structure",
                    value=self.mask_structure,
                )
            if name.endswith("lm_head"):
                _LOG.warning(
                    "%s: %s is pruned; llm-compressor no longer leaves lm_head out on its own "
                    "and advises against pruning it. To leave it dense, add 're:.*lm_head' to "
                    "ignore.",
                    self.lifecycle_label,
                    name,
                )
        self._sparsities = {name: sparsities[name] for name in found}
        return found

    def _compress(self, name: str, layer: torch.nn.Linear, hessian: torch.Tensor) -> dict[str, Any]:
        weight = layer.weight
        target = self._sparsities[name]
        result = sparsegpt_prune(
            weight.detach(),
            hessian,
            sparsity=target,
            mask_structure=self.mask_structure,
            block_size=self.block_size,
            dampening_frac=self.dampening_frac,
        )
        weight.copy_(result.weight)
        pruned = int((~result.mask).sum())
        return {
            "sparsity": pruned / result.mask.numel(),
            "pruned": pruned,
            "target_sparsity": target,
            "mask_structure": self.mask_structure,
            "loss": result.loss,
        }
