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
import math
import re
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import jwt
import requests

from cds_hooks.errors import CdsHooksError, Unauthorized

log = logging.getLogger(__name__)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str) -> str:
    """One spelling per URL, for comparing and caching: scheme and host in lower case, no default port,
    no doubled or trailing slashes in the path, no fragment (``HTTPS://Keys.Example.org:443//jwks/`` ->
    ``https://keys.example.org/jwks``). Used by the ``jku`` allowlist, the key-set cache and the ``aud`` check.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:                       # a malformed port or netloc: compare it as written
        scheme, sep, rest = url.partition("://")
        return (scheme.lower() + sep + re.sub(r"/{2,}", "/", rest)).rstrip("/")
    if not parts.scheme or not parts.netloc:     # not an absolute URL (a manually configured aud such as "sand_man")
        return re.sub(r"/{2,}", "/", url.strip()).rstrip("/")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:                          # IPv6 literal
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    path = re.sub(r"/{2,}", "/", parts.path).rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


@dataclass
class _KeySet:
    """One cached JWK Set: its keys by ``kid``, when fetched and used, the fetch in flight."""

    url: str                                  # the URL fetched (the allowlisted spelling)
    keys: dict[str, dict] = field(default_factory=dict)
    fetched_at: float | None = None           # last successful fetch
    attempted_at: float | None = None         # last fetch started (successful or not): the rate limit
    used_at: float = 0.0
    in_flight: Future | None = None


class JwksCache:
    """JWK Sets by normalised URL: cached for ``ttl_s``, fetched beside requests, never under a shared lock.

    - One entry per :func:`normalise_url` spelling, at most ``max_urls`` (least recently used go first).
    - At most one fetch per URL at a time (single flight) and per ``refresh_min_s`` (successful or not):
      an unknown ``kid`` refetches once (that is how a client's key rotation reaches us), forged kids
      and spelling variants do not make a fetch storm.
    - Each fetch runs in its own thread; a caller waits for it at most ``wait_s`` (the hook's remaining
      deadline), and the only lock shared by requests guards the dictionary, never the network.
    - A set in use is refreshed in the background at 80 % of ``ttl_s``; an expired set whose refresh is
      not back yet (or failed) is still used for up to ``ttl_s`` more, so a slow key host never holds a hook.
    """

    def __init__(self, *, ttl_s: float, refresh_min_s: float, timeout_s: float = 2.0, max_urls: int = 64,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.refresh_min_s, self.timeout_s, self.max_urls = ttl_s, refresh_min_s, timeout_s, max_urls
        self.session = session or requests.Session()
        self._clock = clock
        self._sets: OrderedDict[str, _KeySet] = OrderedDict()
        self._lock = threading.Lock()          # guards _sets only; held for dictionary work, never for I/O
        self._closed = threading.Event()
        self._refresher: threading.Thread | None = None
        self.fetches = 0

    # --- fetching (in its own thread) ---------------------------------------------------------------
    def _fetch(self, url: str) -> dict[str, dict]:
        try:
            response = self.session.get(url, timeout=(self.timeout_s, self.timeout_s), allow_redirects=False)
            response.raise_for_status()
            keys = response.json()["keys"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            raise Unauthorized(f"JWK Set {url} could not be read: {type(e).__name__}") from None
        if not isinstance(keys, list):
            raise Unauthorized(f"JWK Set {url} could not be read: keys is not an array")
        return {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}

    def _run_fetch(self, norm: str, entry: _KeySet, future: Future) -> None:
        try:
            keys = self._fetch(entry.url)
        except BaseException as e:          # noqa: BLE001 - handed to the waiters through the future
            log.warning("JWK Set fetch failed: %s", e.message if isinstance(e, Unauthorized) else type(e).__name__)
            with self._lock:
                entry.in_flight = None
            future.set_exception(e if isinstance(e, Unauthorized) else
                                 Unauthorized(f"JWK Set {entry.url} could not be read: {type(e).__name__}"))
            return
        with self._lock:
            entry.keys, entry.fetched_at, entry.in_flight = keys, self._clock(), None
        future.set_result(keys)
        self._start_refresher()

    def _start_fetch(self, norm: str, entry: _KeySet, now: float) -> Future | None:
        """Under ``_lock``: the fetch in flight, or a new one if the rate limit allows, else None."""
        if entry.in_flight is not None:
            return entry.in_flight
        if entry.attempted_at is not None and now - entry.attempted_at < self.refresh_min_s:
            return None
        entry.attempted_at = now
        entry.in_flight = future = Future()
        self.fetches += 1
        threading.Thread(target=self._run_fetch, args=(norm, entry, future), name="jwks-fetch", daemon=True).start()
        return future

    def _entry(self, url: str) -> tuple[str, _KeySet]:
        """Under ``_lock``: the entry of ``url`` (created, evicting the least recently used beyond max_urls)."""
        norm = normalise_url(url)
        entry = self._sets.get(norm)
        if entry is None:
            entry = self._sets[norm] = _KeySet(url=url)
            while len(self._sets) > self.max_urls:
                self._sets.popitem(last=False)
        self._sets.move_to_end(norm)
        return norm, entry

    def key(self, url: str, kid: str, *, wait_s: float | None = None) -> dict:
        """The JWK with ``kid`` from the set at ``url`` (call only with an allowlisted URL).

        Parameters
        ----------
        url : str
            The JWK Set URL (cached under its :func:`normalise_url` spelling).
        kid : str
            The token's key id.
        wait_s : float, optional
            The longest this call waits for a fetch (default: twice the HTTP timeout).

        Raises
        ------
        Unauthorized
            The set could not be read in time, or has no ``kid`` (the message names the URL, never a token).
        """
        wait_s = 2 * self.timeout_s if wait_s is None else max(0.0, wait_s)
        with self._lock:
            now = self._clock()
            norm, entry = self._entry(url)
            entry.used_at = now
            age = None if entry.fetched_at is None else now - entry.fetched_at
            fresh = age is not None and age <= self.ttl_s
            usable = age is not None and age <= 2 * self.ttl_s + self.refresh_min_s
            future = None
            if not fresh or kid not in entry.keys:
                future = self._start_fetch(norm, entry, now)
            if usable and kid in entry.keys:
                return entry.keys[kid]          # fresh, or stale while its refresh runs beside
        if future is not None:
            try:
                future.result(timeout=wait_s)
            except FutureTimeout:
                raise Unauthorized(f"JWK Set {entry.url} did not answer within {wait_s:.1f} s") from None
            except Unauthorized:
                pass                            # the fetch failed: a usable older set may still hold the kid
        with self._lock:
            now = self._clock()
            age = None if entry.fetched_at is None else now - entry.fetched_at
            if age is not None and age <= 2 * self.ttl_s + self.refresh_min_s and kid in entry.keys:
                return entry.keys[kid]
            if entry.fetched_at is None:
                raise Unauthorized(f"JWK Set {entry.url} could not be read (rate-limited or failed)")
        raise Unauthorized(f"kid {kid!r} is not in the JWK Set {entry.url}")

    # --- background refresh -------------------------------------------------------------------------
    def _start_refresher(self) -> None:
        if self.ttl_s <= 0 or self._closed.is_set():
            return
        with self._lock:
            if self._refresher is not None:
                return
            self._refresher = threading.Thread(target=_refresh_loop, args=(weakref.ref(self), self._closed),
                                               name="jwks-refresh", daemon=True)
        self._refresher.start()

    def refresh_due(self) -> int:
        """Start a fetch of every set in use that is past 80 % of its TTL; returns how many started."""
        started = 0
        with self._lock:
            now = self._clock()
            for norm, entry in self._sets.items():
                due = entry.fetched_at is not None and now - entry.fetched_at >= 0.8 * self.ttl_s
                in_use = now - entry.used_at <= 2 * self.ttl_s
                if due and in_use and entry.in_flight is None and self._start_fetch(norm, entry, now) is not None:
                    started += 1
        return started

    def close(self) -> None:
        """Stop the background refresh."""
        self._closed.set()


def _refresh_loop(ref: "weakref.ref[JwksCache]", closed: threading.Event) -> None:
    """Refresh due key sets until the cache is closed or gone (holds it only while working)."""
    while True:
        cache = ref()
        if cache is None:
            return
        interval = max(1.0, min(30.0, cache.ttl_s / 5))
        cache.refresh_due()
        del cache
        if closed.wait(interval):
            return


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
    max_lifetime_s : int
        The largest accepted ``exp - iat`` (``CXR_CDS_JWT_MAX_LIFETIME_S``).
    """

    def __init__(self, issuers: Mapping[str, Any], *, algorithms: tuple[str, ...], leeway_s: int,
                 jwks: JwksCache, remember_jti: Callable[[str, str, int], bool], max_lifetime_s: int = 3600):
        self.issuers = dict(issuers)
        self.algorithms = tuple(a for a in algorithms if not a.upper().startswith("HS") and a.lower() != "none")
        self.leeway_s = leeway_s
        self.jwks = jwks
        self.remember_jti = remember_jti
        self.max_lifetime_s = max_lifetime_s

    def close(self) -> None:
        """Stop the key sets' background refresh."""
        self.jwks.close()

    def _jwk(self, iss: str, header: Mapping[str, Any], wait_s: float | None = None) -> dict:
        """The issuer's public key for ``kid``; a token's ``jku`` is fetched only if allowlisted.

        An issuer with a ``jku`` allowlist refuses any other ``jku``. A key registered out of band
        (``jwks``) is used as it is, whatever ``jku`` the token names: the CDS Hooks sandbox always
        sends its ``jku``, and a dev profile that pins the sandbox's JWK Set must not need the
        network. A ``jku`` that is not allowlisted is never fetched.
        """
        config = self.issuers[iss]
        kid = header["kid"]
        jku = header.get("jku")
        # normalised spelling -> the allowlisted URL as configured (the one fetched, whatever the token's spelling)
        allowed = {normalise_url(u): u for u in config.get("jku") or ()}
        if jku is not None and allowed and (not isinstance(jku, str) or normalise_url(jku) not in allowed):
            raise Unauthorized(f"jku is not on the allowlist of issuer {iss}")
        if config.get("jwks"):
            for key in config["jwks"].get("keys") or ():
                if key.get("kid") == kid:
                    return key
        if jku is not None and allowed:
            return self.jwks.key(allowed[normalise_url(jku)], kid, wait_s=wait_s)
        if config.get("jwks_url"):
            return self.jwks.key(config["jwks_url"], kid, wait_s=wait_s)
        if config.get("jwks"):
            raise Unauthorized(f"kid {kid!r} is not in the configured JWK Set of {iss}")
        raise Unauthorized(f"issuer {iss} has no jku allowlist and no configured JWK Set for this token")

    def verify(self, authorization: str | None, audience: str, *, wait_s: float | None = None) -> dict:
        """Verify an ``Authorization`` header value for a call to ``audience``.

        Parameters
        ----------
        authorization : str or None
            The header value, ``Bearer <JWT>``.
        audience : str
            The absolute URL that was invoked (from the configured public base URL).
        wait_s : float, optional
            The longest to wait for a remote JWK Set (pass the hook's remaining deadline); a set not
            back by then is a 401 for this call, and its fetch goes on for the next.

        Returns
        -------
        dict
            The verified claims.

        Raises
        ------
        Unauthorized
            For any failure, unexpected ones included; the message is for the log only.
        store.StoreUnavailable
            The token is valid but its ``jti`` could not be recorded (503: our outage, never a 401).
        """
        try:
            return self._verify(authorization, audience, wait_s)
        except Unauthorized:
            raise
        except CdsHooksError as e:
            if e.status == 503:          # the replay store cannot be written: our outage, not a bad token
                raise
            raise Unauthorized(f"JWT refused: {e.code}") from None
        except Exception as e:          # fail closed: a crafted token must never become a 500
            log.warning("JWT verification failed unexpectedly: %s", type(e).__name__)
            raise Unauthorized(f"JWT refused: unexpected {type(e).__name__} during verification") from None

    def _verify(self, authorization: str | None, audience: str, wait_s: float | None = None) -> dict:
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
        self._check_times(iss, unverified)
        jwk = self._jwk(iss, header, wait_s)
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

    def _check_times(self, iss: str, claims: Mapping[str, Any]) -> None:
        """``exp``/``iat``/``nbf`` are NumericDates (JSON numbers, not strings) and ``exp - iat`` is bounded."""
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))
                                   or not math.isfinite(value)):
                raise Unauthorized(f"JWT from {iss}: claim {name} is not a number (NumericDate)")
        exp, iat = claims.get("exp"), claims.get("iat")
        if exp is not None and iat is not None and exp - iat > self.max_lifetime_s:
            raise Unauthorized(f"JWT from {iss}: lifetime exp - iat = {int(exp - iat)} s is over the "
                               f"{self.max_lifetime_s} s allowed (CXR_CDS_JWT_MAX_LIFETIME_S)")


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


def cors_headers(origin: str | None, allowed: tuple[str, ...], *, private_network: bool = False) -> dict[str, str]:
    """CORS response headers for a request from ``origin``: empty unless it is listed (``CXR_CDS_CORS_ORIGINS``).

    Never ``*``: the answers hold clinical text. ``private_network`` (the request asked with
    ``Access-Control-Request-Private-Network: true``) adds the grant, for a listed origin only.
    """
    listed = {o.rstrip("/").lower() for o in allowed}
    if not origin or origin.rstrip("/").lower() not in listed:
        return {"Vary": "Origin"} if allowed else {}
    headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": CORS_METHODS,
               "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": "600", "Vary": "Origin"}
    if private_network:
        headers["Access-Control-Allow-Private-Network"] = "true"
    return headers
