"""The typed recipe: schema, loading with overrides, validation."""

from fai_rl.config.load import load_recipe, recipe_to_dict, recipe_to_yaml
from fai_rl.config.schema import ALGORITHMS, BACKENDS, Recipe

__all__ = ["ALGORITHMS", "BACKENDS", "Recipe", "load_recipe", "recipe_to_dict", "recipe_to_yaml"]
