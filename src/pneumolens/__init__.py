"""pneumolens: train, evaluate and explain a chest X-ray pneumonia classifier.

It supports a clinician's reading; it does not make a diagnosis.
"""

__version__ = "0.1.0"
