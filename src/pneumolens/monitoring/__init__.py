"""Watching a deployed model: the audit trail of every call (``audit``), drift between two windows
of it (``drift``), the model's agreement with the clinicians' reads (``agreement``), and alerts to a
webhook (``alert``)."""
