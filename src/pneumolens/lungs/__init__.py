"""Lung fields: a segmenter trained from scratch, plausibility flags, lung-aware preprocessing."""
