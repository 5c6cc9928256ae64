"""The YAML recipes, shipped with the package as ``mmjepa.recipes`` (see :func:`recipe_path`)."""

from pathlib import Path


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe, e.g. ``recipe_path("image/digits_ijepa_cpu")``."""
    here = Path(__file__).resolve().parent
    path = here / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if not path.is_file():
        available = sorted(str(p.relative_to(here).with_suffix("")) for p in here.rglob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name!r}; shipped recipes: {available}")
    return path
