"""seqtext: embedding + BiLSTM encoder with classifier, NER tagger and language-model heads.

Python API (the CLI is a thin layer over it)::

    import seqtext
    run_dir = seqtext.train("recipes/demo_sentiment.toml", {"train.epochs": 2})
    model = seqtext.load(run_dir)
    model.predict(["A wonderful film.", "Dull and far too long."])
    model.evaluate(split="test")
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from .errors import SeqtextError

if TYPE_CHECKING:
    from .model import Model, load
    from .recipe import Recipe, load_recipe
    from .train import train

__all__ = ["Model", "Recipe", "SeqtextError", "load", "load_recipe", "train"]
__version__ = "0.1.0"

# The API's names are imported on first use: importing torch takes seconds, and `seqtext --help`,
# an error in a recipe or Ctrl-C at start-up need none of it (the CLI imports what a command uses).
_LAZY = {"Model": "model", "load": "model", "Recipe": "recipe", "load_recipe": "recipe", "train": "train"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'seqtext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``seqtext.train`` is the training function, also once the submodule seqtext/train.py is imported.

    Importing a submodule binds it as an attribute of its package (``seqtext.train = <module>``),
    which would shadow the function; this keeps the function, as an eager ``from .train import
    train`` here did. The module itself stays in ``sys.modules["seqtext.train"]``.
    """

    def __setattr__(self, name, value):
        if name == "train" and isinstance(value, types.ModuleType):
            value = value.train
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
