"""Authentication: none, bearer token, HTTP basic, SMART Backend Services.

Rule: a secret is read from an environment variable or a file, never from the
command line (where ``ps`` shows it), kept in memory only, registered with
:mod:`.redact` the moment it is read or made (so no message can repeat it, in
any form), and never put into a message, a log line or an exception. A secret
holding a control character (a line break would split an HTTP header) is
refused before use, without being repeated. Each provider gives the headers
for a request and can be asked to refresh after a 401.

SMART Backend Services (client credentials with a signed JWT assertion,
RS384, or ES384 on P-384) discovers its token endpoint from
``.well-known/smart-configuration`` on the server's own origin, and sends the
signed assertion only to an https token endpoint or to the server's own
origin (never in clear text elsewhere). Every exchange goes through the
server's :class:`~.http.Transport`, so it has the same deadlines, size caps
and single notion of origin as the FHIR requests. The access token is renewed
a minute before it expires, and once more when the server says 401. JWTs and
keys are handled by PyJWT and cryptography, not by hand.
"""

from __future__ import annotations

import base64
import math
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import UsageError
from ..text import printable
from .http import Answer, Limits, ServerError, Transport
from .redact import register, shown
from .urls import Reach

REFRESH_MARGIN = 60  # seconds before expiry when a token is renewed
ASSERTION_LIFETIME = 240  # seconds; servers accept at most 5 minutes
SMART_CURVE = "secp384r1"  # ES384 is ECDSA on P-384


class AuthError(UsageError):
    """Authentication cannot be set up or was refused; the message holds no secret."""

    def __init__(self, message: str):
        super().__init__(shown(message))


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
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise AuthError(f"cannot read the {what} file {path}: {reason}") from None
        if not text:
            raise AuthError(f"the {what} file {path} is empty")
        return text.splitlines()[0].strip()
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise AuthError(f"the environment variable {env} holding the {what} is not set")
        return value
    raise AuthError(f"no {what} given: name an environment variable or a file")


def exposed(path: str | Path) -> int | None:
    """The mode of a secret file that group or others may read or write (None: private)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # reading it will say why
    return mode if mode & 0o077 else None


def check_secret(value: str, what: str, header: bool = False) -> str:
    """A secret, refused (without repeating it) when it cannot be sent safely.

    Control characters (a CR/LF would split the HTTP header) are never allowed;
    a value that goes into a header as it is (a bearer token) must be visible
    ASCII.

    >>> check_secret("abc.DEF-123_~+/=", "bearer token", header=True)
    'abc.DEF-123_~+/='
    >>> check_secret("ab\\r\\nX-Evil: 1", "bearer token")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fhir_cohort.transport.auth.AuthError: the bearer token holds a control character ...
    """
    if printable(value) != value:
        raise AuthError(
            f"the {what} holds a control character (a line break?); refusing to use it: "
            "check where it comes from"
        )
    if header and not all("!" <= c <= "~" for c in value):
        raise AuthError(
            f"the {what} holds a character an HTTP header cannot carry (a space or a letter "
            "outside ASCII); refusing to use it: check where it comes from"
        )
    return value


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
        self._token = check_secret(token, "bearer token", header=True)
        register(token)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


class BasicAuth:
    """HTTP basic: a user name and a password (from ``read_secret``)."""

    def __init__(self, user: str, password: str):
        check_secret(password, "password")
        if printable(user) != user or ":" in user:
            raise AuthError("--user must not hold a colon or a control character")
        pair = f"{user}:{password}"
        encoded = base64.b64encode(pair.encode()).decode()
        register(password, pair, encoded)
        self._header = f"Basic {encoded}"
        self.user = user

    def headers(self) -> dict[str, str]:
        return {"Authorization": self._header}

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"BasicAuth(user={self.user!r}, password=***)"


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
NOT_SIGNING = "SMART Backend Services needs an RSA or EC private key"


def load_private_key(path: str | Path) -> SigningKey:
    """A PEM private key (RSA or EC P-384) from a file; its password, if any, from
    FHIR_COHORT_KEY_PASSWORD. Any other kind of key is refused here."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AuthError(f"cannot read the private key {path}: {error.strerror}") from None
    password = os.environ.get("FHIR_COHORT_KEY_PASSWORD")
    if password:
        register(password)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError) as error:
        raise AuthError(f"{path} is not a usable PEM private key ({error})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise AuthError(f"{path}: {NOT_SIGNING}")
    return key


def algorithm_for(key: SigningKey) -> str:
    """The SMART signing algorithm for a key: RS384 for RSA, ES384 for EC on P-384."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != SMART_CURVE:
            raise AuthError(
                f"the private key is an EC key on curve {key.curve.name}; SMART Backend "
                f"Services signs ES384, which needs P-384 ({SMART_CURVE}): make a P-384 key, "
                "or use RSA"
            )
        return "ES384"
    raise AuthError(NOT_SIGNING)


def _error_detail(answer: Answer) -> str:
    """What a refusing token endpoint says (its OAuth error), or the HTTP reason."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error_description", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return shown(body[key], 300)
    return answer.reason


@dataclass
class SmartBackendAuth:
    """SMART Backend Services: client_credentials with a private_key_jwt assertion."""

    fhir_base: str
    client_id: str
    private_key: SigningKey = field(repr=False)
    scope: str = "system/*.rs"
    algorithm: str | None = None
    key_id: str | None = None
    token_url: str | None = None
    timeout: float = 30.0
    verify: bool | str = True
    transport: Transport | None = field(default=None, repr=False)
    _token: str | None = field(default=None, repr=False)
    _expires: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.algorithm = self.algorithm or algorithm_for(self.private_key)
        if self.transport is None:
            self.transport = Transport(
                self.fhir_base, Limits(timeout=self.timeout), verify=self.verify
            )

    def _exchange(self, method: str, url: str, reach: Reach, **kwargs) -> Answer:
        assert self.transport is not None
        prepared = self.transport.prepare(
            method, url, reach, headers={"Accept": "application/json"}, **kwargs
        )
        return self.transport.send(prepared)

    def discover(self) -> str:
        """The token endpoint (from .well-known/smart-configuration unless configured),
        refused unless it is https or on the FHIR server's own origin."""
        assert self.transport is not None
        if not self.token_url:
            url = urljoin(self.transport.base, ".well-known/smart-configuration")
            try:
                answer = self._exchange("GET", url, Reach.SERVER)
                body = answer.json() if answer.status_code == 200 else None
            except (ServerError, ValueError) as error:
                reason = str(error) if isinstance(error, ServerError) else "not JSON"
                raise AuthError(f"cannot discover the token endpoint: {reason}") from None
            endpoint = body.get("token_endpoint") if isinstance(body, dict) else None
            if not isinstance(endpoint, str) or not endpoint:
                raise AuthError(
                    f"cannot discover the token endpoint from {answer.where}: "
                    f"HTTP {answer.status_code}, no token_endpoint"
                )
            self.token_url = urljoin(self.transport.base, endpoint)
        refused = self.transport.check(self.token_url, Reach.TOKEN)
        if refused:
            self.token_url, token_url = None, self.token_url
            raise AuthError(
                f"refusing the token endpoint: {refused}; the signed client assertion goes "
                "only to an https token endpoint or to the FHIR server's own origin"
                + (" (--token-url)" if token_url else "")
            )
        return self.token_url

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
        try:
            assertion = jwt.encode(
                claims, self.private_key, algorithm=self.algorithm, headers=headers
            )
        except jwt.PyJWTError as error:
            raise AuthError(f"cannot sign the client assertion: {error}") from None
        register(assertion)
        return assertion

    def _fetch(self) -> None:
        token_url = self.discover()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": self._assertion(token_url),
        }
        try:
            answer = self._exchange("POST", token_url, Reach.TOKEN, data=form)
        except ServerError as error:
            raise AuthError(f"token request failed: {error}") from None
        if answer.status_code != 200:
            detail = _error_detail(answer)
            raise AuthError(f"token request refused ({answer.status_code}): {detail}")
        try:
            body = answer.json()
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(
                f"the token endpoint {answer.where} answered 200 without an access_token"
            )
        register(token)
        check_secret(token, "access token from the token endpoint", header=True)
        lifetime = body.get("expires_in", 300)  # type: ignore[union-attr]
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if type(lifetime) not in (int, float) or not math.isfinite(lifetime):
            lifetime = 0  # unreadable: fetched again for the next request
        self._token = token
        self._expires = time.monotonic() + float(lifetime)

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires - REFRESH_MARGIN:
                self._fetch()
            return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        with self._lock:
            self._fetch()
        return True
