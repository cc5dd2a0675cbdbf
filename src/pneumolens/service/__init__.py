"""The decision-support web service: ``pneumolens serve``."""
