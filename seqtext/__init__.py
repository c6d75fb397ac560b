"""seqtext: embedding + BiLSTM encoder with classifier, NER tagger and language-model heads.

Python API (the CLI is a thin layer over it)::

    import seqtext
    run_dir = seqtext.train("recipes/demo_sentiment.toml", {"train.epochs": 2})
    model = seqtext.load(run_dir)
    model.predict(["A wonderful film.", "Dull and far too long."])
    model.evaluate(split="test")
"""

from .errors import SeqtextError
from .model import Model, load
from .recipe import Recipe, load_recipe
from .train import train

__all__ = ["Model", "Recipe", "SeqtextError", "load", "load_recipe", "train"]
__version__ = "0.1.0"
