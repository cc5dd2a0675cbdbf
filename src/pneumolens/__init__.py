"""pneumolens: train, evaluate and explain a chest X-ray pneumonia classifier.

It supports a clinician's reading; it does not make a diagnosis.
"""

__version__ = "0.1.0"


def load(path=None):
    """The shipped default model, or the model file / run directory at ``path`` (see pneumolens.api)."""
    from pneumolens.api import load as _load

    return _load(path)
