"""SMART Backend Services authorisation for ``listen --fhir-url``: how a system with no user at it
(the node) gets an access token from an EHR's authorisation server, as EHRs ask of such clients
(SMART App Launch 2, "Backend Services"; OAuth 2.0 client credentials with a signed JWT as the
client's credential, RFC 7523).

The site registers the node with the EHR once: a client ID, and the public half of a key pair
(``pneumolens fhir-key KEY``, a JWK Set). For each token the node signs a short-lived assertion
(``iss`` and ``sub`` the client ID, ``aud`` the token endpoint, ``exp`` five minutes ahead, a new
``jti``) with the private key, RS384 for an RSA key or ES384 for an EC P-384 key, ``kid`` the key's
RFC 7638 thumbprint, and posts it to the token endpoint (found in the FHIR server's
``.well-known/smart-configuration`` unless given). The token is kept until a minute before it
expires and renewed once when the FHIR server answers 401. The private key never leaves the file;
the log names the token endpoint by scheme, host and port and quotes only the OAuth error code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pneumolens.monitoring.alert import exchange, where

DEFAULT_SCOPE = "system/Observation.write system/DiagnosticReport.write"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300  # the spec's most
EARLY_S = 60.0  # a token is renewed this long before it expires (half its life if that is shorter)
TIMEOUT_S = 30.0
MIN_RSA_BITS = 2048


class AuthError(Exception):
    """No token: the reason in the authorisation server's terms (never a secret)."""


def load_key(path: str | Path, flag: str = "--fhir-key") -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The private key in the PEM file ``path`` (unencrypted; RSA of 2048 bits or more, or EC
    P-384), else ``ValueError`` naming the file and the flag."""
    name = f"{flag} {path}".strip()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{name}: cannot read it ({e.strerror or e})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: not an unencrypted PEM private key ({e})") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return key
    raise ValueError(
        f"{name}: expected an RSA key of {MIN_RSA_BITS} bits or more (RS384) or an EC P-384 key (ES384), "
        "the two that SMART authorisation servers must accept"
    )


def new_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Write a new EC P-384 private key to ``path`` (PEM, readable by its owner only); never overwrites."""
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        with open(path, "xb", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
            f.write(pem)
    except FileExistsError:
        raise ValueError(f"{path} exists: a key is never overwritten (its public half may be registered)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot write it ({e.strerror or e})") from None
    return key


def algorithm(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return "RS384" if isinstance(key, rsa.RSAPrivateKey) else "ES384"


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The public half of ``key`` as a JWK, with ``kid`` its thumbprint, ``alg`` and ``key_ops``."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    jwk = {k: jwk[k] for k in ("kty", "crv", "x", "y", "n", "e") if k in jwk}
    return {**jwk, "kid": thumbprint(jwk), "alg": algorithm(key), "key_ops": ["verify"]}


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK (base64url, no padding)."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def jwks(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The JWK Set to register with the EHR for ``key``."""
    return {"keys": [public_jwk(key)]}


@dataclass
class SmartAuth:
    """Access tokens for the FHIR server at ``fhir_url``, as the registered client ``client_id``."""

    fhir_url: str
    client_id: str
    key_path: str
    token_url: str | None = None  # None: from the server's .well-known/smart-configuration
    scope: str = DEFAULT_SCOPE
    tls: ssl.SSLContext | None = None  # for https endpoints; None: the system's CAs
    tokens_fetched: int = 0
    _token: str | None = field(default=None, repr=False)
    _expires: float = 0.0

    def __post_init__(self) -> None:
        self.key = load_key(self.key_path)
        self.kid = public_jwk(self.key)["kid"]

    def authorization(self) -> str:
        """The ``Authorization`` header's value; ``AuthError`` when no token can be had."""
        if self._token is None or time.time() >= self._expires:
            self._token, lifetime = self._fetch()
            self._expires = time.time() + lifetime - min(EARLY_S, lifetime / 2)
            self.tokens_fetched += 1
        return f"Bearer {self._token}"

    def forget(self) -> None:
        """Drop the kept token (the FHIR server no longer takes it)."""
        self._token = None

    def assertion(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "exp": now + ASSERTION_LIFETIME_S,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key, algorithm=algorithm(self.key), headers={"kid": self.kid, "typ": "JWT"})

    def endpoint(self) -> str:
        """The token endpoint: given, or from the FHIR server's SMART configuration (asked once)."""
        if self.token_url is None:
            url = self.fhir_url.rstrip("/") + "/.well-known/smart-configuration"
            status, body = self._request(urllib.request.Request(url, headers={"Accept": "application/json"}))
            config = _json(body) if status == 200 else None
            token_url = config.get("token_endpoint") if isinstance(config, dict) else None
            if not isinstance(token_url, str) or not token_url.startswith(("https://", "http://")):
                raise AuthError(
                    f"{where(url)} gave no token endpoint in its SMART configuration (HTTP {status}); "
                    "give it with --fhir-token-url"
                )
            self.token_url = token_url
        return self.token_url

    def _fetch(self) -> tuple[str, float]:
        url = self.endpoint()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(url),
        }
        request = urllib.request.Request(
            url,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            method="POST",
        )
        status, body = self._request(request)
        answer = _json(body)
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            code = answer.get("error") if isinstance(answer, dict) else None
            said = f" ({code})" if isinstance(code, str) and code.replace("_", "").isalnum() else ""
            raise AuthError(f"the token endpoint {where(url)} answered HTTP {status}{said}")
        lifetime = answer.get("expires_in", ASSERTION_LIFETIME_S)
        lifetime = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else ASSERTION_LIFETIME_S
        return answer["access_token"], lifetime

    def _request(self, request: urllib.request.Request) -> tuple[int, bytes]:
        context = self.tls if request.full_url.startswith("https:") else None
        try:
            return exchange(request, TIMEOUT_S, context)
        except (urllib.error.URLError, OSError) as e:
            raise AuthError(f"{where(request.full_url)} could not be reached ({getattr(e, 'reason', e)})") from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
