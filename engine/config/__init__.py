"""Configuration: recipes, the modifier factory and the argument types recipes are checked by."""

from modfsm.engine.config.argtypes import (
    Mismatch,
    describe,
    field_annotations,
    mismatch,
)
from modfsm.engine.config.factory import (
    ModifierFactory,
    ModifierImportError,
    UnknownModifierError,
)
from modfsm.engine.config.recipe import (
    ModifierSpec,
    Recipe,
    RecipeError,
    RecipeProblem,
    StageSpec,
)

__all__ = [
    "Mismatch",
    "ModifierFactory",
    "ModifierImportError",
    "ModifierSpec",
    "Recipe",
    "RecipeError",
    "RecipeProblem",
    "StageSpec",
    "UnknownModifierError",
    "describe",
    "field_annotations",
    "mismatch",
]
