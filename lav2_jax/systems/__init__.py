"""The systems this framework trains, one package each: `lav2` (LLaMA-Adapter V2), `llava` (LLaVA), `owl`
(mPLUG-Owl). The registry's public face (`lav2_jax.core.registry`):

  lav2_jax.systems.register(system)   add a `System` (a subclass of `lav2_jax.systems.System`)
  lav2_jax.systems.get(name)          the System called `name`
  lav2_jax.systems.names()            ["lav2", "llava", "owl", ...any registered later]
"""

from lav2_jax.core.registry import Recipe, get, names, of, recipe, recipes, register, unregister
from lav2_jax.core.system import Converter, Exporter, System, VisualFrontEnd

__all__ = ["Converter", "Exporter", "Recipe", "System", "VisualFrontEnd", "get", "names", "of", "recipe", "recipes",
           "register", "unregister"]
