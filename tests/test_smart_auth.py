"""SMART Backend Services (``pneumolens.integration.smart_auth``; ``listen --fhir-client-id --fhir-key``,
``pneumolens fhir-key``), against a stand-in EHR on this machine: an authorisation server that
checks each signed assertion against the key set the site registered, and a FHIR server that takes
only the tokens it issued."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import StandIn, assert_refused, reply
from pneumolens.cli import main
from pneumolens.cli.sending import fhir_outbox_of
from pneumolens.integration.fhir import transaction
from pneumolens.integration.fhir_outbox import FhirSender
from pneumolens.integration.outbox import Outbox
from pneumolens.integration.smart_auth import ASSERTION_TYPE, DEFAULT_SCOPE, load_key, new_key, public_jwk, thumbprint

RESULT = {"probability": 0.8, "threshold": 0.4, "flags": [], "model": {"name": "m", "version": "1", "sha256": "ab"}}
CLIENT = "pneumolens-node-7"


def _bundle(uid: str) -> bytes:
    return json.dumps(transaction(RESULT, uid)).encode()


class Ehr(StandIn):
    """A SMART configuration, a token endpoint and a FHIR endpoint; ``registered`` is the site's JWKS."""

    def __init__(self, registered: dict, expires_in: int = 300, discoverable: bool = True):
        self.registered, self.expires_in, self.discoverable = registered, expires_in, discoverable
        self.refuse, self.issued, self.assertions, self.received, self.jtis = None, set(), [], [], set()
        ehr = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status, body):
                reply(self, status, json.dumps(body).encode(), "application/json")

            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == "/fhir/.well-known/smart-configuration" and ehr.discoverable:
                    config = {"token_endpoint": ehr.token_url, "grant_types_supported": ["client_credentials"]}
                    self._answer(200, config)
                else:
                    self._answer(404, {})

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/auth/token":
                    self._answer(*ehr.token(urllib.parse.parse_qs(body.decode())))
                elif self.headers.get("Authorization", "").removeprefix("Bearer ") in ehr.issued:
                    ehr.received.append(json.loads(body))
                    self._answer(200, {"resourceType": "Bundle", "type": "transaction-response"})
                else:
                    self._answer(401, {"resourceType": "OperationOutcome"})

            def log_message(self, *args):
                pass

        super().__init__(Handler)
        self.url, self.token_url = f"{self.base}/fhir", f"{self.base}/auth/token"

    def token(self, form: dict) -> tuple[int, dict]:
        """Checks as an authorisation server must (SMART Backend Services, RFC 7523)."""
        if self.refuse:
            return 400, {"error": self.refuse, "error_description": "the key is not registered"}
        (assertion,) = form["client_assertion"]
        assert form["grant_type"] == ["client_credentials"] and form["client_assertion_type"] == [ASSERTION_TYPE]
        header = jwt.get_unverified_header(assertion)
        (key,) = [k for k in self.registered["keys"] if k["kid"] == header["kid"]]
        claims = jwt.decode(
            assertion, jwt.PyJWK(key).key, algorithms=[key["alg"]], audience=self.token_url, issuer=CLIENT
        )
        assert header["typ"] == "JWT" and claims["sub"] == CLIENT
        assert 0 < claims["exp"] - time.time() <= 300 and claims["jti"] not in self.jtis  # short-lived, never reused
        self.jtis.add(claims["jti"])
        self.assertions.append((header, claims, form["scope"][0]))
        token = f"tok-{len(self.issued)}"
        self.issued.add(token)
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}


@pytest.fixture
def key_and_jwks(tmp_path, capsys):
    """A key made as a site would: ``pneumolens fhir-key KEY --create``, its printed JWKS registered."""
    path = tmp_path / "node.pem"
    assert main(["fhir-key", str(path), "--create"]) == 0
    registered = json.loads(capsys.readouterr().out)
    return str(path), registered


@pytest.fixture
def ehr(stand_ins):
    return lambda *args, **kwargs: stand_ins(Ehr, *args, **kwargs)


def test_bundles_are_posted_with_a_token_got_by_a_signed_assertion_and_kept(ehr, key_and_jwks, tmp_path):
    key, registered = key_and_jwks
    server = ehr(registered)
    sender = FhirSender(server.url, smart={"client_id": CLIENT, "key_path": key})  # token endpoint discovered
    outbox = Outbox(tmp_path / "outbox", sender)
    for uid in ("1.1", "1.2"):
        outbox.put(uid, _bundle(uid))
    assert outbox.deliver() and outbox.delivered == 2 and len(server.received) == 2
    assert sender.auth.tokens_fetched == 1  # one token for both
    ((header, claims, scope),) = server.assertions
    assert header["alg"] == "ES384" and header["kid"] == registered["keys"][0]["kid"]
    assert claims["aud"] == server.token_url and scope == DEFAULT_SCOPE
    assert (os.stat(key).st_mode & 0o777) == 0o600


def test_a_token_is_renewed_before_it_expires_and_once_after_a_401(ehr, key_and_jwks, tmp_path):
    key, registered = key_and_jwks
    server = ehr(registered, expires_in=1)  # renewed at half its life when that is under a minute
    sender = FhirSender(server.url, smart={"client_id": CLIENT, "key_path": key, "token_url": server.token_url})
    outbox = Outbox(tmp_path / "outbox", sender)
    outbox.put("2.1", _bundle("2.1"))
    assert outbox.deliver() and sender.auth.tokens_fetched == 1
    time.sleep(0.6)
    outbox.put("2.2", _bundle("2.2"))
    assert outbox.deliver() and sender.auth.tokens_fetched == 2
    server.expires_in = 3600
    sender.auth.forget()
    outbox.put("2.3", _bundle("2.3"))
    assert outbox.deliver() and sender.auth.tokens_fetched == 3
    server.issued.clear()  # the EHR revokes every token it gave: the next POST is answered 401
    outbox.put("2.4", _bundle("2.4"))
    assert outbox.deliver() and sender.auth.tokens_fetched == 4 and len(server.received) == 4


def test_without_a_token_the_bundle_waits_and_the_log_keeps_no_secret(ehr, key_and_jwks, tmp_path, caplog):
    key, registered = key_and_jwks
    server = ehr(registered)
    server.refuse = "invalid_client"
    outbox = Outbox(tmp_path / "outbox", FhirSender(server.url, smart={"client_id": CLIENT, "key_path": key}))
    outbox.put("3.1", _bundle("3.1"))
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        assert not outbox.deliver()
    assert len(outbox.waiting()) == 1 and outbox.rejected == 0  # the bundle is fine: credentials can be mended
    assert "no access token" in caplog.text and "HTTP 400 (invalid_client)" in caplog.text
    assert server.token_url.rsplit("/auth", 1)[0] in caplog.text and "/auth/token" not in caplog.text
    assert "eyJ" not in caplog.text and "not registered" not in caplog.text  # no assertion, no server prose
    server.refuse = None
    assert outbox.deliver() and outbox.waiting() == [] and server.received  # mended: sent on the next pass

    hidden = ehr(registered, discoverable=False)
    caplog.clear()
    lost = Outbox(tmp_path / "outbox2", FhirSender(hidden.url, smart={"client_id": CLIENT, "key_path": key}))
    lost.put("3.2", _bundle("3.2"))
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        assert not lost.deliver()
    assert "HTTP 404" in caplog.text and "--fhir-token-url" in caplog.text
    away = {"client_id": CLIENT, "key_path": key, "token_url": "http://127.0.0.1:9/token"}  # nothing on port 9
    assert FhirSender(hidden.url, smart=away)(_bundle("3.3")).why.startswith("no access token: http://127.0.0.1:9")


def test_the_key_thumbprint_is_rfc7638s():
    # RFC 7638, section 3.1: the example RSA key and its SHA-256 thumbprint
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV"
        "4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c"
        "7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF"
        "44-csFCur-kEgU8awapJzKnqDKgw"
    )
    expected = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert thumbprint({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256"}) == expected


def _write(path, key, password=None):
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return str(path)


def test_only_keys_an_ehr_must_accept_are_taken(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    taken = load_key(_write(tmp_path / "rsa.pem", rsa_key))
    jwk = public_jwk(taken)
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS384" and "d" not in jwk and jwk["kid"] == thumbprint(jwk)
    cases = [
        (_write(tmp_path / "small.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024)), "RSA key"),
        (_write(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1())), "EC P-384"),
        (_write(tmp_path / "locked.pem", ec.generate_private_key(ec.SECP384R1()), b"pw"), "unencrypted PEM"),
        (str(tmp_path / "none.pem"), "cannot read it"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            load_key(path)
        assert f"--fhir-key {path}" in str(caught.value)
    new_key(tmp_path / "new.pem")
    with pytest.raises(ValueError, match="never overwritten"):
        new_key(tmp_path / "new.pem")
    with pytest.raises(ValueError, match="never overwritten"):
        new_key(tmp_path / "rsa.pem")
    assert load_key(str(tmp_path / "rsa.pem")).private_numbers() == rsa_key.private_numbers()  # left as it was


def _args(**given):
    flags = ("fhir", "fhir_url", "fhir_token_file", "fhir_ca", "fhir_client_id", "fhir_key", "fhir_token_url")
    return SimpleNamespace(**{**dict.fromkeys(flags + ("fhir_scope",)), **given})


def test_the_cli_flags_build_the_sender_and_are_checked_before_the_model_loads(ehr, key_and_jwks, tmp_path, capsys):
    key, registered = key_and_jwks
    server = ehr(registered)
    args = _args(
        fhir=str(tmp_path / "fhir"),
        fhir_url=server.url,
        fhir_client_id=CLIENT,
        fhir_key=key,
        fhir_scope="  system/Observation.c   system/DiagnosticReport.c ",
    )
    outbox = fhir_outbox_of(args)
    outbox.put("4.1", _bundle("4.1"))
    assert outbox.deliver() and server.assertions[0][2] == "system/Observation.c system/DiagnosticReport.c"

    token = tmp_path / "token"
    token.write_text("tok\n")
    fhir = ["--fhir", str(tmp_path / "f"), "--fhir-url", "http://h/fhir"]
    cases = [
        (["--fhir-client-id", CLIENT, "--fhir-key", key], "--fhir-client-id is for --fhir-url"),
        (fhir + ["--fhir-key", key], "--fhir-key needs --fhir-client-id"),
        (fhir + ["--fhir-token-url", "http://h/token"], "--fhir-token-url needs --fhir-client-id"),
        (fhir + ["--fhir-client-id", CLIENT], "needs --fhir-key PEM"),
        (fhir + ["--fhir-client-id", CLIENT, "--fhir-key", str(tmp_path / "gone.pem")], "gone.pem: cannot read"),
        (fhir + ["--fhir-client-id", CLIENT, "--fhir-key", key, "--fhir-token-url", "ftp://h/t"], "--fhir-token-url:"),
        (fhir + ["--fhir-client-id", CLIENT, "--fhir-key", key, "--fhir-scope", " "], "--fhir-scope"),
        (fhir + ["--fhir-client-id", CLIENT, "--fhir-key", key, "--fhir-token-file", str(token)], "not both"),
    ]
    base = ["listen", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    assert_refused(capsys, base, cases)
    assert main(["fhir-key", str(tmp_path / "gone.pem")]) != 0
    assert f"{tmp_path / 'gone.pem'}: cannot read it" in capsys.readouterr().err
