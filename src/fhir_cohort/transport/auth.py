"""Authentication: none, bearer token, HTTP basic, SMART Backend Services.

Rule: a secret is read from an environment variable or a file, never from the
command line (where ``ps`` shows it), kept in memory only, and never put into
a message, a log line or an exception. Each provider gives the headers for a
request and can be asked to refresh after a 401.

SMART Backend Services (client credentials with a signed JWT assertion,
RS384 or ES384) discovers its token endpoint from
``.well-known/smart-configuration``, refreshes the access token a minute
before it expires, and once more when the server says 401. JWTs and keys are
handled by PyJWT and cryptography, not by hand.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import UsageError

REFRESH_MARGIN = 60  # seconds before expiry when a token is renewed
ASSERTION_LIFETIME = 240  # seconds; servers accept at most 5 minutes


class AuthError(UsageError):
    """Authentication cannot be set up or was refused; the message holds no secret."""


class Auth(Protocol):
    def headers(self) -> dict[str, str]: ...
    def refresh(self) -> bool:
        """Renew credentials after a 401; False when there is nothing to renew."""


def read_secret(
    env: str | None = None, file: str | Path | None = None, what: str = "secret"
) -> str:
    """A secret from an environment variable or a file (first line, stripped)."""
    if file:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise AuthError(f"cannot read the {what} file {path}: {error.strerror}") from None
        if not text:
            raise AuthError(f"the {what} file {path} is empty")
        return text.splitlines()[0].strip()
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise AuthError(f"the environment variable {env} holding the {what} is not set")
        return value
    raise AuthError(f"no {what} given: name an environment variable or a file")


class NoAuth:
    def headers(self) -> dict[str, str]:
        return {}

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NoAuth()"


class BearerAuth:
    """A static bearer token (from ``read_secret``)."""

    def __init__(self, token: str):
        self._token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


class BasicAuth:
    """HTTP basic: a user name and a password (from ``read_secret``)."""

    def __init__(self, user: str, password: str):
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._header = f"Basic {pair}"
        self.user = user

    def headers(self) -> dict[str, str]:
        return {"Authorization": self._header}

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"BasicAuth(user={self.user!r}, password=***)"


def _session() -> requests.Session:
    """A session that picks up no proxy or .netrc credentials from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def load_private_key(path: str | Path):
    """A PEM private key (RSA or EC P-384) from a file; its password, if any, from
    FHIR_COHORT_KEY_PASSWORD."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AuthError(f"cannot read the private key {path}: {error.strerror}") from None
    password = os.environ.get("FHIR_COHORT_KEY_PASSWORD")
    try:
        return serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError) as error:
        raise AuthError(f"{path} is not a usable PEM private key ({error})") from None


def algorithm_for(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES384"
    raise AuthError("SMART Backend Services needs an RSA or EC private key")


@dataclass
class SmartBackendAuth:
    """SMART Backend Services: client_credentials with a private_key_jwt assertion."""

    fhir_base: str
    client_id: str
    private_key: object = field(repr=False)
    scope: str = "system/*.rs"
    algorithm: str | None = None
    key_id: str | None = None
    token_url: str | None = None
    timeout: float = 30.0
    verify: bool | str = True
    _token: str | None = field(default=None, repr=False)
    _expires: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def discover(self) -> str:
        """The token endpoint, from the server's .well-known/smart-configuration."""
        if self.token_url:
            return self.token_url
        url = self.fhir_base.rstrip("/") + "/.well-known/smart-configuration"
        try:
            answer = _session().get(
                url,
                timeout=self.timeout,
                verify=self.verify,
                headers={"Accept": "application/json"},
            )
            answer.raise_for_status()
            self.token_url = str(answer.json()["token_endpoint"])
        except (requests.RequestException, ValueError, KeyError, TypeError) as error:
            raise AuthError(
                f"cannot discover the token endpoint from {url}: {type(error).__name__}"
            ) from None
        return self.token_url  # type: ignore[return-value]

    def _assertion(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "exp": now + ASSERTION_LIFETIME,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        headers = {"typ": "JWT", **({"kid": self.key_id} if self.key_id else {})}
        algorithm = self.algorithm or algorithm_for(self.private_key)
        return jwt.encode(claims, self.private_key, algorithm=algorithm, headers=headers)

    def _fetch(self) -> None:
        token_url = self.discover()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": self._assertion(token_url),
        }
        try:
            answer = _session().post(
                token_url,
                data=form,
                timeout=self.timeout,
                verify=self.verify,
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as error:
            raise AuthError(
                f"token request to {token_url} failed: {type(error).__name__}"
            ) from None
        if answer.status_code != 200:
            try:
                body = answer.json()
                detail = body.get("error_description") or body.get("error")
            except (ValueError, AttributeError):
                detail = answer.reason
            raise AuthError(f"token request refused ({answer.status_code}): {detail}")
        try:
            body = answer.json()
            self._token = str(body["access_token"])
            self._expires = time.monotonic() + float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuthError(
                f"the token endpoint {token_url} answered 200 without a usable access_token"
            ) from None

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires - REFRESH_MARGIN:
                self._fetch()
            return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        with self._lock:
            self._fetch()
        return True
