"""Explanations: Grad-CAM, occlusion and LIME maps, their faithfulness, and pictures of them."""

from pneumolens.explain.explainer import METHODS, Explanation, explain_image

__all__ = ["METHODS", "Explanation", "explain_image"]
