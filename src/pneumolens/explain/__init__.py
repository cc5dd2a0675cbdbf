"""Explanations: Grad-CAM, occlusion and LIME maps, their faithfulness, and pictures of them."""

from pneumolens.explain.explainer import DEFAULT_METHOD, METHODS, Explanation, explain_image

__all__ = ["DEFAULT_METHOD", "METHODS", "Explanation", "explain_image"]
