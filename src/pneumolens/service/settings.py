"""Service settings from the environment (``PNEUMOLENS_*``) or the ``serve`` command line."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PNEUMOLENS_", protected_namespaces=())

    model: str | None = None  # model file or run directory; None: the shipped model
    backend: Literal["torch", "onnx"] = "torch"
    onnx_path: str | None = None  # with backend "onnx": an exported file (default: exported at start-up)
    max_upload_mb: float = Field(default=50.0, gt=0)  # bounded: -1 refused every upload, and started without a word
    max_concurrent: int = Field(
        default=64, ge=1
    )  # requests waiting for the model beyond this get 503, never lost silently
    default_method: Literal["gradcam", "lime", "occlusion"] = "occlusion"  # the faithful map (explain.DEFAULT_METHOD)
    api_token: SecretStr | None = None  # set: every /api/* request needs "Authorization: Bearer <token>"
    request_timeout_s: float = Field(default=60.0, gt=0)  # a prediction taking longer is answered 504
    shutdown_grace_s: float = Field(
        default=30.0, ge=0
    )  # on stop, how long to wait for predictions answered 504 still running
    cors_origins: list[str] = []  # browsers may call the API from these origins; none by default
    audit: bool = True  # record every prediction in the audit trail (pneumolens.monitoring.audit)
    audit_url: str | None = None  # SQLAlchemy URL; None: $PNEUMOLENS_AUDIT_URL or the default SQLite file
    orders: str | None = None  # an order book (``pneumolens orders``): format=hl7 / fhir answer under the order
