"""The hook's FHIR data: prefetch first, then the EHR's ``fhirServer`` for what is absent.

Rules (CDS Hooks 2.0, "Prefetch" and the service-side checklist items 20-27):
- a key present in prefetch is used as sent; ``null`` or an empty searchset is "no data" and is
  not re-queried; an OperationOutcome is the client's error for that key, never clinical data;
- an absent key is fetched from ``fhirServer`` only if that server is on the allowlist, with the
  bearer token from ``fhirAuthorization``, short timeouts, and ``next``-link paging;
- a prefetch searchset with a ``next`` link is completed from an allowlisted ``fhirServer``; when
  that can't be done (no ``fhirServer``, not allowlisted, a page fails) the pages we have are used
  but the key is listed in ``HookData.partial``: it is never taken for the complete set;
- data the service requires (the Patient) that can't be obtained -> 412 (``PreconditionFailed``).
The access token goes only to ``fhirServer`` and never into a log line or an error message.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urljoin, urlsplit

import requests

from cds_hooks.errors import PreconditionFailed
from cds_hooks.redact import hook_instance_tag
from cds_hooks.services import HookRequest, Service

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("patient",)
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")
_MAX_PAGES = 10


@dataclass(frozen=True)
class HookData:
    """The FHIR resources one hook call works with (already checked to be the right types)."""

    patient: Mapping[str, Any] | None
    conditions: tuple[Mapping[str, Any], ...] = ()
    encounter: Mapping[str, Any] | None = None
    fetched: tuple[str, ...] = ()          # prefetch keys read from fhirServer (for metrics/tests)
    # keys whose searchset is known to be incomplete (a `next` page we could not read): their
    # resources are a subset, e.g. "conditions" from the first page only; absence there means nothing
    partial: tuple[str, ...] = ()


class FhirFetchError(Exception):
    """One fallback FHIR query failed (HTTP error, timeout, not FHIR JSON)."""


def fhir_server_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """Whether ``url`` is on the allowlist of FHIR servers we may call (and send tokens to).

    Entries are base URLs (matched as a path prefix on the same scheme, host and port) or bare
    host names (https only).
    """
    parts = urlsplit(url)
    for entry in allowlist:
        if "://" in entry:
            allowed = urlsplit(entry.rstrip("/"))
            if (parts.scheme, parts.netloc) == (allowed.scheme, allowed.netloc) and (
                    parts.path.rstrip("/") + "/").startswith(allowed.path.rstrip("/") + "/"):
                return True
        elif parts.scheme == "https" and parts.hostname == entry.lower():
            return True
    return False


class FhirClient:
    """Reads from the EHR's FHIR server with the hook's bearer token (edge module: network I/O)."""

    def __init__(self, base_url: str, access_token: str | None, *, timeout_s: float,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = {"Accept": "application/fhir+json"}
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def _get(self, url: str) -> dict:
        # messages name the resource type only: URLs carry patient ids, and messages reach logs
        what = f"FHIR {_resource_type(url, self.base_url)} query"
        try:
            response = self.session.get(url, headers=self._headers, timeout=(self.timeout_s, self.timeout_s),
                                        allow_redirects=False)
        except requests.RequestException as e:
            raise FhirFetchError(f"{what} failed: {type(e).__name__}") from None
        if response.status_code != 200:
            raise FhirFetchError(f"{what} returned HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise FhirFetchError(f"{what} did not return JSON") from None
        if not isinstance(data, dict) or "resourceType" not in data:
            raise FhirFetchError(f"{what} did not return a FHIR resource")
        if data["resourceType"] == "OperationOutcome":
            raise FhirFetchError(f"{what} returned an OperationOutcome")
        return data

    def get(self, relative: str) -> dict:
        """A read or search relative to the base; searches have all ``next`` pages merged in."""
        data = self._get(urljoin(self.base_url, relative))
        if data["resourceType"] == "Bundle":
            return self._all_pages(data)
        return data

    def _all_pages(self, bundle: dict) -> dict:
        entries = list(bundle.get("entry") or ())
        page, pages = bundle, 1
        while (nxt := _next_link(page)) is not None:
            # the token must never follow a link to another host
            if urlsplit(nxt).netloc and urlsplit(nxt).netloc != urlsplit(self.base_url).netloc:
                raise FhirFetchError("next link points to another host; not followed")
            if pages >= _MAX_PAGES:
                raise FhirFetchError(f"more than {_MAX_PAGES} pages; result incomplete")
            page = self._get(urljoin(self.base_url, nxt))
            entries.extend(page.get("entry") or ())
            pages += 1
        return {**bundle, "entry": entries, "link": [l for l in bundle.get("link") or ()
                                                     if l.get("relation") != "next"]}


def _resource_type(url: str, base_url: str) -> str:
    path = urlsplit(url).path
    base = urlsplit(base_url).path
    relative = path[len(base):] if path.startswith(base) else path.rsplit("/", 2)[-2]
    return relative.split("/")[0] or "unknown"


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return link["url"]
    return None


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """Fill ``{{context.x}}`` tokens; None when a token has no value (the key is then skipped)."""
    missing = False

    def fill(match: re.Match) -> str:
        nonlocal missing
        value = context.get(match.group(1))
        if not isinstance(value, str) or not value:
            missing = True
            return ""
        return value

    out = _TOKEN.sub(fill, template)
    return None if missing else out


def _is_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def _resources(value: Any, resource_type: str) -> list[dict]:
    """Resources of one type from a resource or a searchset Bundle (OperationOutcome entries dropped)."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == resource_type:
        return [value]
    if value.get("resourceType") == "Bundle":
        return [e["resource"] for e in value.get("entry") or ()
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == resource_type]
    return []


def gather(request: HookRequest, service: Service, *, allowlist: tuple[str, ...], timeout_s: float,
           session: requests.Session | None = None) -> HookData:
    """Collect the Patient, active Conditions and Encounter for one hook call.

    Parameters
    ----------
    request : HookRequest
        The parsed hook request (prefetch, fhirServer, fhirAuthorization).
    service : Service
        The called service; its prefetch templates say what to fetch when a key is absent.
    allowlist : tuple of str
        FHIR servers we may call (``CXR_CDS_FHIR_ALLOWLIST``).
    timeout_s : float
        Connect and read timeout of each fallback query.
    session : requests.Session, optional
        HTTP session for the fallback queries.

    Returns
    -------
    HookData

    Raises
    ------
    PreconditionFailed
        The Patient is neither usable in prefetch nor obtainable from fhirServer.
    """
    prefetch = request.prefetch or {}
    values: dict[str, Any] = {}
    failed: dict[str, str] = {}
    to_fetch: dict[str, str] = {}
    for key, template in service.prefetch.items():
        if key in prefetch:
            if _is_outcome(prefetch[key]):
                failed[key] = "the client's prefetch returned an OperationOutcome"
            else:
                values[key] = prefetch[key]      # may be None: "no data", not re-queried
            continue
        relative = render_template(template, request.context)
        if relative is not None:
            to_fetch[key] = relative

    fetched: list[str] = []
    if to_fetch:
        if request.fhir_server is None:
            failed.update({k: "absent from prefetch and no fhirServer was given" for k in to_fetch})
        elif not fhir_server_allowed(request.fhir_server, allowlist):
            failed.update({k: f"absent from prefetch and fhirServer {request.fhir_server} is not on "
                              "CXR_CDS_FHIR_ALLOWLIST" for k in to_fetch})
        else:
            token = request.fhir_authorization.access_token if request.fhir_authorization else None
            client = FhirClient(request.fhir_server, token, timeout_s=timeout_s, session=session)
            with ThreadPoolExecutor(max_workers=len(to_fetch)) as pool:
                futures = {k: pool.submit(client.get, rel) for k, rel in to_fetch.items()}
            for key, future in futures.items():
                try:
                    values[key] = future.result()
                    fetched.append(key)
                except FhirFetchError as e:
                    failed[key] = str(e)
                    log.warning("hookInstance=%s prefetch %s: %s", hook_instance_tag(request.hook_instance), key, e)

    # a paginated prefetch searchset is completed from fhirServer when we may call it; otherwise its
    # first page is used and the key is marked partial (CDS Hooks 2.0 "Prefetch": follow `next`
    # if you need all of it; checklist item 26: never treat it as complete if you don't)
    partial: list[str] = []
    for key, value in list(values.items()):
        if key in fetched or not isinstance(value, dict) or _next_link(value) is None:
            continue
        if request.fhir_server is None:
            why = "no fhirServer was given"
        elif not fhir_server_allowed(request.fhir_server, allowlist):
            why = "fhirServer is not on CXR_CDS_FHIR_ALLOWLIST"
        else:
            token = request.fhir_authorization.access_token if request.fhir_authorization else None
            try:
                values[key] = FhirClient(request.fhir_server, token, timeout_s=timeout_s,
                                         session=session)._all_pages(value)
                fetched.append(key)
                continue
            except FhirFetchError as e:
                why = f"its next page could not be read ({e})"
        partial.append(key)
        log.warning("hookInstance=%s prefetch %s is paginated and %s; using the page(s) sent, "
                    "an incomplete set", hook_instance_tag(request.hook_instance), key, why)

    patients = _resources(values.get("patient"), "Patient")
    for key in REQUIRED_KEYS:
        if key == "patient" and not patients:
            why = failed.get(key) or "prefetch holds no Patient"
            raise PreconditionFailed(f"the Patient ({service.prefetch['patient']}) is required to find the "
                                     f"patient's radiographs (DICOM PatientID) and could not be obtained: {why}")
    conditions = tuple(_resources(values.get("conditions"), "Condition"))
    encounters = _resources(values.get("encounter"), "Encounter")
    return HookData(patient=patients[0], conditions=conditions,
                    encounter=encounters[0] if encounters else None, fetched=tuple(fetched),
                    partial=tuple(partial))
