"""Verifying the EHR's bearer JWT (CDS Hooks 2.0 + docs/best-practices.md), and CORS.

Order of checks: well-formed -> alg on our list (never ``none`` or HS*) -> ``typ``/``kid`` ->
``iss`` on the allowlist -> ``jku``, if the issuer has an allowlist, on it -> key from the issuer's
configured JWK Set, else its allowlisted ``jku`` or ``jwks_url`` (cached; one refetch on an
unknown ``kid``, rate-limited) -> signature -> ``aud`` = the invoked URL -> ``exp``/``iat`` with
leeway -> ``jti`` not seen before. Any failure is ``Unauthorized``
whose message goes to the log (with ``iss`` and ``jti`` at most, never the token) and never to
the client. Header and claim values are attacker-chosen JSON: their types are checked before use,
and any unexpected exception during verification is a 401 too (fail closed), never a 500.

``/studies/*`` may instead use a shared secret (``CXR_CDS_PACS_TOKEN``, see :func:`check_shared_secret`):
a PACS script sends one fixed token on every call, which single-use JWTs (``jti``) cannot serve.
"""
from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from typing import Any, Callable, Mapping

import jwt
import requests

from cds_hooks.errors import Unauthorized

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Compare URLs without trailing slashes or doubled slashes in the path."""
    scheme, sep, rest = url.partition("://")
    return (scheme.lower() + sep + re.sub(r"/{2,}", "/", rest)).rstrip("/")


class JwksCache:
    """JWK Sets by URL, cached for ``ttl_s``.

    An unknown ``kid`` refetches the set once (that is how a client's key rotation reaches us);
    further unknown-kid refetches of the same URL wait ``refresh_min_s`` (no fetch storm from forged kids).
    """

    def __init__(self, *, ttl_s: float, refresh_min_s: float, timeout_s: float = 2.0,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.refresh_min_s, self.timeout_s = ttl_s, refresh_min_s, timeout_s
        self.session = session or requests.Session()
        self._clock = clock
        self._sets: dict[str, tuple[float, dict[str, dict]]] = {}
        self._last_refresh: dict[str, float] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def _fetch(self, url: str) -> dict[str, dict]:
        self.fetches += 1
        try:
            response = self.session.get(url, timeout=(self.timeout_s, self.timeout_s), allow_redirects=False)
            response.raise_for_status()
            keys = response.json()["keys"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            raise Unauthorized(f"JWK Set {url} could not be read: {type(e).__name__}") from None
        return {k["kid"]: k for k in keys if isinstance(k, dict) and "kid" in k}

    def key(self, url: str, kid: str) -> dict:
        """The JWK with ``kid`` from the set at ``url`` (call only with an allowlisted URL)."""
        with self._lock:
            now = self._clock()
            fetched_at, keys = self._sets.get(url, (None, {}))
            if fetched_at is None or now - fetched_at > self.ttl_s:
                keys = self._fetch(url)
                self._sets[url] = (now, keys)
            elif kid not in keys:
                last = self._last_refresh.get(url)
                if last is None or now - last >= self.refresh_min_s:
                    self._last_refresh[url] = now
                    keys = self._fetch(url)
                    self._sets[url] = (now, keys)
            if kid not in keys:
                raise Unauthorized(f"kid {kid!r} is not in the JWK Set {url}")
            return keys[kid]


class JwtVerifier:
    """Checks one bearer JWT for one invoked URL.

    Parameters
    ----------
    issuers : Mapping
        ``{iss: {"jku": [allowed JWK Set URLs], "jwks_url": url, "jwks": {"keys": [...]},
        "audiences": [extra accepted aud values]}}``.
    algorithms : tuple of str
        Accepted ``alg`` values (asymmetric only).
    leeway_s : int
        Clock skew allowed on ``exp`` and ``iat``.
    jwks : JwksCache
        Fetches and caches remote JWK Sets.
    remember_jti : callable
        ``(iss, jti, exp) -> bool``, False on a replay; shared by all worker processes.
    """

    def __init__(self, issuers: Mapping[str, Any], *, algorithms: tuple[str, ...], leeway_s: int,
                 jwks: JwksCache, remember_jti: Callable[[str, str, int], bool]):
        self.issuers = dict(issuers)
        self.algorithms = tuple(a for a in algorithms if not a.upper().startswith("HS") and a.lower() != "none")
        self.leeway_s = leeway_s
        self.jwks = jwks
        self.remember_jti = remember_jti

    def _jwk(self, iss: str, header: Mapping[str, Any]) -> dict:
        """The issuer's public key for ``kid``; a token's ``jku`` is fetched only if allowlisted.

        An issuer with a ``jku`` allowlist refuses any other ``jku``. A key registered out of band
        (``jwks``) is used as it is, whatever ``jku`` the token names: the CDS Hooks sandbox always
        sends its ``jku``, and a dev profile that pins the sandbox's JWK Set must not need the
        network. A ``jku`` that is not allowlisted is never fetched.
        """
        config = self.issuers[iss]
        kid = header["kid"]
        jku = header.get("jku")
        allowed = {normalise_url(u) for u in config.get("jku") or ()}
        if jku is not None and allowed and (not isinstance(jku, str) or normalise_url(jku) not in allowed):
            raise Unauthorized(f"jku is not on the allowlist of issuer {iss}")
        if config.get("jwks"):
            for key in config["jwks"].get("keys") or ():
                if key.get("kid") == kid:
                    return key
        if jku is not None and allowed:
            return self.jwks.key(jku, kid)
        if config.get("jwks_url"):
            return self.jwks.key(config["jwks_url"], kid)
        if config.get("jwks"):
            raise Unauthorized(f"kid {kid!r} is not in the configured JWK Set of {iss}")
        raise Unauthorized(f"issuer {iss} has no jku allowlist and no configured JWK Set for this token")

    def verify(self, authorization: str | None, audience: str) -> dict:
        """Verify an ``Authorization`` header value for a call to ``audience``.

        Parameters
        ----------
        authorization : str or None
            The header value, ``Bearer <JWT>``.
        audience : str
            The absolute URL that was invoked (from the configured public base URL).

        Returns
        -------
        dict
            The verified claims.

        Raises
        ------
        Unauthorized
            For any failure, unexpected ones included; the message is for the log only.
        """
        try:
            return self._verify(authorization, audience)
        except Unauthorized:
            raise
        except Exception as e:          # fail closed: a crafted token must never become a 500
            log.warning("JWT verification failed unexpectedly: %s", type(e).__name__)
            raise Unauthorized(f"JWT refused: unexpected {type(e).__name__} during verification") from None

    def _verify(self, authorization: str | None, audience: str) -> dict:
        if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
            raise Unauthorized("no Bearer token")
        token = authorization[len("Bearer "):].strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise Unauthorized(f"malformed JWT ({type(e).__name__})") from None
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise Unauthorized("malformed JWT (header or payload is not a JSON object)")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            shown = repr(alg)[:20] if isinstance(alg, str) else f"of type {type(alg).__name__}"
            raise Unauthorized(f"alg {shown} is not accepted (accepted: {', '.join(self.algorithms)})")
        typ, kid = header.get("typ", "JWT"), header.get("kid")
        if not isinstance(typ, str) or typ.upper() != "JWT" or not isinstance(kid, str) or not kid:
            raise Unauthorized("JWT header needs typ JWT and a kid (strings)")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss not in self.issuers:
            raise Unauthorized(f"issuer {iss!r} is not trusted")
        jwk = self._jwk(iss, header)
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            claims = jwt.decode(token, key=key, algorithms=[alg], issuer=iss, leeway=self.leeway_s,
                                options={"require": ["exp", "iat", "jti", "iss", "aud"], "verify_aud": False})
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise Unauthorized(f"JWT from {iss} refused: {type(e).__name__}") from None
        accepted = {normalise_url(audience)} | {normalise_url(a) for a in self.issuers[iss].get("audiences") or ()}
        auds = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not any(isinstance(a, str) and normalise_url(a) in accepted for a in auds):
            raise Unauthorized(f"JWT from {iss}: aud does not name the invoked URL")
        if not self.remember_jti(iss, str(claims["jti"]), int(claims["exp"])):
            raise Unauthorized(f"JWT from {iss}: jti {claims['jti']} was already used (replay)")
        return claims


CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"


def check_shared_secret(authorization: str | None, secret: str) -> None:
    """Check ``Authorization: Bearer <secret>`` in constant time (``hmac.compare_digest``).

    Raises
    ------
    Unauthorized
        No bearer value, or not the secret; the message names neither.
    """
    presented = ""
    if isinstance(authorization, str) and authorization.startswith("Bearer "):
        presented = authorization[len("Bearer "):].strip()
    if not hmac.compare_digest(presented.encode("utf-8"), secret.encode("utf-8")):
        raise Unauthorized("not the PACS shared secret (CXR_CDS_PACS_TOKEN)")


def cors_headers(origin: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """CORS response headers for a request from ``origin`` (empty when that origin isn't allowed)."""
    if "*" in allowed:
        allow = "*"
    elif origin and origin in allowed:
        allow = origin
    else:
        return {}
    headers = {"Access-Control-Allow-Origin": allow, "Access-Control-Allow-Methods": CORS_METHODS,
               "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": "600"}
    if allow != "*":
        headers["Vary"] = "Origin"
    return headers
