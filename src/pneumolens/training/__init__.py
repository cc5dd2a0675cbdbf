"""Training logic (LightningModule) and the ``fit`` entry point."""
