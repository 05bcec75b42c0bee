"""The CDS services we advertise, the hook request as a typed value, and chest X-ray order recognition.

Pure: values in, values out. The HTTP views (cds_hooks.hooks) call these at the boundary.

``draftOrders`` is required context of order-select and order-sign (a FHIR Bundle), so a malformed
one is a malformed request: 400, not an empty answer (CDS_HOOKS.md section 5: "required context
field missing" -> 400; a value of the wrong JSON type is no better than a missing one). Checked
here: an object, ``resourceType`` Bundle when given, ``entry`` (when given) an array of objects
whose ``resource`` (when given) is an object; likewise ``selections``, when sent, must be an
array of strings. Tolerated, as the spec's checklist item 17 asks: no ``Bundle.type``, an empty
or absent ``entry``, absolute references, non-imaging resources (a Bundle without a chest X-ray
ServiceRequest gets ``{"cards": []}``).

Before any of that, the body itself (:func:`decode_json`): UTF-8 only, nested at most
:data:`MAX_JSON_DEPTH` levels (counted on the raw bytes, before parsing), no lone surrogate in any
string (``"\ud800"`` parses in Python but cannot be stored, logged or sent on), no ``NaN``/``Infinity``.
After the hand-written checks, the whole request is checked against the hook's JSON Schema
(``cds_hooks/schemas/<hook>.json``: every field CDS Hooks 2.0 defines, and the types of the FHIR
elements this service reads), so a wrongly typed field is a 400 naming it, never a failure later.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from cds_hooks.errors import BadRequest, InvalidField, UnknownService

#: Deepest JSON nesting accepted (a CDS Hooks request with a FHIR Bundle needs about 10).
MAX_JSON_DEPTH = 64
SCHEMAS = Path(__file__).with_name("schemas")


@dataclass(frozen=True)
class Service:
    """One entry of the discovery document (CDS Hooks 2.0 section "Discovery")."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    usage_requirements: str

    def to_json(self) -> dict:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": self.usage_requirements,
        }


# 2.0-valid templates: only root-level context tokens; relative reads/type-level searches;
# token equality, reference params and _count only.
_PATIENT = "Patient/{{context.patientId}}"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")    # FHIR R4 id
_CONDITIONS = "Condition?patient={{context.patientId}}&clinical-status=active&_count=50"
_ENCOUNTER = "Encounter/{{context.encounterId}}"
_USAGE = ("Reads the chest radiograph from the site's PACS over DICOMweb (QIDO-RS/WADO-RS); needs "
          "Patient (MRN identifiers for the DICOM PatientID) and, optionally, active Conditions and the "
          "Encounter. Fires only for chest radiograph orders (LOINC/CPT, configurable). Cards are "
          "AI-generated drafts for clinician review.")

SERVICES: tuple[Service, ...] = (
    Service(
        id="cxr-ai-order-select",
        hook="order-select",
        title="Chest X-ray AI draft (order select)",
        description=("When a chest radiograph order is selected, shows the AI draft for the ordered "
                     "study if it is already acquired, else the AI findings of the most recent prior "
                     "chest radiograph, and starts the analysis in the background."),
        prefetch={"patient": _PATIENT, "conditions": _CONDITIONS, "encounter": _ENCOUNTER},
        usage_requirements=_USAGE,
    ),
    Service(
        id="cxr-ai-order-sign",
        hook="order-sign",
        title="Chest X-ray AI draft (order sign)",
        description=("When chest radiograph orders are signed, offers the AI-generated preliminary "
                     "DiagnosticReport draft for the ordered study (or a prior's findings) for review."),
        prefetch={"patient": _PATIENT, "conditions": _CONDITIONS, "encounter": _ENCOUNTER},
        usage_requirements=_USAGE,
    ),
    Service(
        id="cxr-ai-patient-view",
        hook="patient-view",
        title="Chest X-ray AI draft (patient view)",
        description=("On chart open, shows the AI findings of the patient's most recent chest "
                     "radiograph when an analysis is stored or quick to compute."),
        prefetch={"patient": _PATIENT, "conditions": _CONDITIONS, "encounter": _ENCOUNTER},
        usage_requirements=_USAGE,
    ),
)
SERVICES_BY_ID = {s.id: s for s in SERVICES}


def get_service(service_id: str) -> Service:
    """The advertised service with this id; ``UnknownService`` (404) otherwise."""
    try:
        return SERVICES_BY_ID[service_id]
    except KeyError:
        raise UnknownService(f"no CDS service {service_id!r}; this service offers "
                             + ", ".join(SERVICES_BY_ID)) from None


def discovery() -> dict:
    """The discovery document: ``{"services": [...]}``."""
    return {"services": [s.to_json() for s in SERVICES]}


@dataclass(frozen=True)
class FhirAuthorization:
    """``fhirAuthorization``; ``access_token`` is transient (never logged, never stored)."""

    access_token: str
    token_type: str
    scope: str
    subject: str | None = None
    patient: str | None = None

    def __repr__(self) -> str:   # keep the token out of any accidental log line
        return f"FhirAuthorization(token_type={self.token_type!r}, scope={self.scope!r})"


@dataclass(frozen=True)
class HookRequest:
    """A parsed, checked CDS Hooks request."""

    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = None
    prefetch: Mapping[str, Any] | None = None

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]

    @property
    def encounter_id(self) -> str | None:
        value = self.context.get("encounterId")
        return value if isinstance(value, str) and value else None


_REQUIRED_CONTEXT = {
    "order-select": ("userId", "patientId", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
    "patient-view": ("userId", "patientId"),
}


def parse_request(service: Service, body: Any) -> HookRequest:
    """Check a hook request body for ``service`` and return it typed.

    Parameters
    ----------
    service : Service
        The service whose endpoint was called.
    body : Any
        The decoded JSON body (None when it did not parse).

    Returns
    -------
    HookRequest

    Raises
    ------
    BadRequest
        Not a JSON object; ``hook``/``hookInstance``/``context`` missing; ``hook`` not served by this
        id; ``fhirAuthorization`` without ``fhirServer``; a required context field missing;
        a malformed ``draftOrders`` or ``selections``; any field of a type CDS Hooks 2.0 (or FHIR R4, for
        the elements read) does not allow (``InvalidField``, naming it).
    """
    if not isinstance(body, dict):
        raise BadRequest("request body is not a JSON object; send a CDS Hooks request "
                         "(hook, hookInstance, context) with Content-Type: application/json")
    missing = [k for k in ("hook", "hookInstance", "context") if not body.get(k)]
    if missing:
        raise BadRequest(f"CDS Hooks request is missing {', '.join(missing)}")
    hook, hook_instance, context = body["hook"], body["hookInstance"], body["context"]
    if not isinstance(hook, str) or not isinstance(hook_instance, str) or not isinstance(context, dict):
        raise BadRequest("hook and hookInstance must be strings and context an object")
    if hook != service.hook:
        raise BadRequest(f"service {service.id!r} serves hook {service.hook!r}, not {hook!r}")
    fhir_server = body.get("fhirServer")
    if fhir_server is not None and (not isinstance(fhir_server, str) or "://" not in fhir_server):
        raise BadRequest("fhirServer must be an absolute URL")
    auth = body.get("fhirAuthorization")
    fhir_authorization = None
    if auth is not None:
        if not fhir_server:
            raise BadRequest("fhirAuthorization is present but fhirServer is missing "
                             "(CDS Hooks 2.0: fhirServer is required with fhirAuthorization)")
        if not isinstance(auth, dict) or not isinstance(auth.get("access_token"), str):
            raise BadRequest("fhirAuthorization must be an object with an access_token")
        fhir_authorization = FhirAuthorization(
            access_token=auth["access_token"], token_type=str(auth.get("token_type", "Bearer")),
            scope=str(auth.get("scope", "")), subject=auth.get("subject"), patient=auth.get("patient"))
    absent = [k for k in _REQUIRED_CONTEXT.get(hook, ()) if k not in context or context[k] in (None, "")]
    if absent:
        raise BadRequest(f"{hook} context is missing {', '.join(absent)}")
    if not isinstance(context.get("patientId"), str) or not _FHIR_ID.fullmatch(context["patientId"]):
        raise BadRequest("context.patientId must be a bare Patient.id (letters, digits, '-' and '.', "
                         "at most 64 characters)")
    encounter_id = context.get("encounterId")
    if encounter_id is not None and not (isinstance(encounter_id, str) and _FHIR_ID.fullmatch(encounter_id)):
        raise BadRequest("context.encounterId must be a bare Encounter.id (letters, digits, '-' and '.', "
                         "at most 64 characters)")
    if hook in ("order-select", "order-sign"):
        _check_draft_orders(context)
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise BadRequest("prefetch must be an object of key -> FHIR resource")
    check_schema(hook, body)
    return HookRequest(hook=hook, hook_instance=hook_instance, context=context,
                       fhir_server=fhir_server.rstrip("/") if fhir_server else None,
                       fhir_authorization=fhir_authorization, prefetch=prefetch)


# a JSON string in the raw bytes, escapes included (unrolled loop: linear, no backtracking)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_depth_exceeds(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``data`` nests arrays/objects deeper than ``limit`` (brackets in strings ignored).

    A scan of the raw bytes, made before parsing so that a deeply nested body never reaches a
    recursive parser. Unbalanced brackets count as they come (the parser refuses that text anyway).
    """
    if data.count(b"[") + data.count(b"{") <= limit:        # the common case: cannot be that deep
        return False
    import numpy as np

    step = np.zeros(256, dtype=np.int8)                     # byte -> +1 open, -1 close, 0 otherwise
    step[[ord("["), ord("{")]], step[[ord("]"), ord("}")]] = 1, -1
    codes = np.frombuffer(_JSON_STRING.sub(b"", data), dtype=np.uint8)   # (n,) bytes outside strings
    return bool(codes.size) and int(np.cumsum(step[codes], dtype=np.int32).max()) > limit


def field_path(path: tuple) -> str:
    """``("context", "draftOrders", "entry", 0)`` -> ``context.draftOrders.entry[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if re.fullmatch(r"[A-Za-z_<][A-Za-z0-9_\- >]{0,63}", part) else json.dumps(part)[:40]
            out += f".{shown}" if out else shown
    return out or "(the body)"


def lone_surrogate(value: Any) -> tuple | None:
    """The path of the first string (key or value) holding a lone surrogate, else None."""
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return where + ("<a key>",)
                stack.append((child, where + (key,)))
        elif isinstance(item, list):
            stack.extend((child, where + (i,)) for i, child in enumerate(item))
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_json(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a request body strictly.

    Parameters
    ----------
    data : bytes or str
        The raw body.
    max_depth : int
        Deepest nesting of arrays and objects accepted, checked before parsing.

    Returns
    -------
    Any
        The decoded JSON value.

    Raises
    ------
    InvalidField
        Not UTF-8 (``code`` ``invalid-text``), nested deeper than ``max_depth`` (``too-deep``), not
        JSON (``malformed-json``), or a string holding a lone surrogate (``invalid-text``, naming the field).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidField(f"request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                           "send JSON encoded as UTF-8", field="(the body)", code="invalid-text") from None
    if json_depth_exceeds(raw, max_depth):
        raise InvalidField(f"request body nests arrays/objects deeper than {max_depth} levels; a CDS Hooks "
                           "request needs far fewer", field="(the body)", code="too-deep")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        detail = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise InvalidField(f"request body is not a JSON object: not valid JSON ({detail[:120]})",
                           field="(the body)", code="malformed-json") from None
    if _SURROGATE_ESCAPE.search(raw):           # only \uD800-\uDFFF escapes can make a lone surrogate
        where = lone_surrogate(value)
        if where is not None:
            field = field_path(where)
            raise InvalidField(f"{field} holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its "
                               "pair), which is not text; send valid Unicode", field=field, code="invalid-text")
    return value


@lru_cache(maxsize=None)
def _validator(hook: str):
    """The Draft 2020-12 validator of ``schemas/<hook>.json`` (its ``common.json`` references resolved)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    loaded = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in loaded.values())
    return Draft202012Validator(loaded[f"{hook}.json"], registry=registry)


_JSON_TYPE_NAMES = {"string": "a string", "number": "a number", "integer": "an integer", "boolean": "a boolean",
                    "array": "an array", "object": "an object", "null": "null"}


def check_schema(hook: str, body: Any) -> None:
    """Check ``body`` against the JSON Schema of ``hook``; raise ``InvalidField`` naming the first bad field.

    Raises
    ------
    InvalidField
        ``code`` ``schema``; ``field`` is the path of the value, e.g. ``context.draftOrders.entry[0].resource.code``.
    """
    errors = sorted(_validator(hook).iter_errors(body),
                    key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path]))
    if not errors:
        return
    error = errors[0]
    field = field_path(tuple(error.absolute_path))
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        message = (f"{field} must be {' or '.join(_JSON_TYPE_NAMES.get(w, w) for w in wanted)}, "
                   f"got {_json_type(error.instance)}")
    elif error.validator == "required":
        missing = [k for k in error.validator_value if isinstance(error.instance, dict) and k not in error.instance]
        message = f"{field} is missing {', '.join(missing)}"
    elif error.validator == "maxLength":
        message = f"{field} is longer than {error.validator_value} characters"
    elif error.validator == "minLength":
        message = f"{field} must not be empty"
    else:
        message = f"{field} does not fit the {hook} request (JSON Schema keyword {error.validator})"
    raise InvalidField(f"{message}; see cds_hooks/schemas/{hook}.json (CDS Hooks 2.0)", field=field, code="schema")


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    for kind, name in ((bool, "a boolean"), (str, "a string"), ((int, float), "a number"), (list, "an array"),
                       (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null"


def _check_draft_orders(context: Mapping[str, Any]) -> None:
    """Raise ``BadRequest`` when ``draftOrders`` or ``selections`` is not of the shape 2.0 defines."""
    bundle = context["draftOrders"]
    if not isinstance(bundle, dict):
        raise BadRequest(f"context.draftOrders must be a FHIR Bundle (a JSON object), got {_json_type(bundle)}")
    if bundle.get("resourceType", "Bundle") != "Bundle":
        raise BadRequest(f"context.draftOrders must be a FHIR Bundle, not resourceType "
                         f"{str(bundle['resourceType'])[:40]!r}")
    entries = bundle.get("entry")
    if entries is not None:
        if not isinstance(entries, list):
            raise BadRequest(f"context.draftOrders.entry must be an array of Bundle entries, got {_json_type(entries)}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("resource", {}), dict):
                raise BadRequest(f"context.draftOrders.entry[{i}] must be an object whose resource is a "
                                 "FHIR resource (an object)")
    selections = context.get("selections")
    if selections is not None and not (isinstance(selections, list)
                                       and all(isinstance(x, str) for x in selections)):
        raise BadRequest('context.selections must be an array of strings such as "ServiceRequest/sr-1"')


def _draft_entries(context: Mapping[str, Any]) -> list[dict]:
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict):
        return []
    out = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            out.append(resource)
    return out


def candidate_orders(request: HookRequest) -> list[dict]:
    """The ServiceRequests this hook asks us to evaluate.

    ``order-select`` evaluates only the entries named in ``selections`` (matched on
    ``resourceType/id``, not fullUrl); without ``selections`` it evaluates none (defensive: no
    cards rather than guesses). ``order-sign`` evaluates every draft order whatever its status.
    ``patient-view`` has no orders.
    """
    entries = [r for r in _draft_entries(request.context) if r.get("resourceType") == "ServiceRequest"]
    if request.hook == "order-select":
        selections = request.context.get("selections")
        if not isinstance(selections, list):
            return []
        wanted = {s.rsplit("/", 2)[-2] + "/" + s.rsplit("/", 1)[-1] for s in selections
                  if isinstance(s, str) and "/" in s}
        return [r for r in entries if f"ServiceRequest/{r.get('id')}" in wanted]
    if request.hook == "order-sign":
        return entries
    return []


def is_chest_xray(service_request: Mapping[str, Any], codes: tuple[str, ...]) -> bool:
    """Whether the ServiceRequest's ``code`` carries one of the configured chest radiograph codes.

    ``codes`` entries are ``system|code`` or a bare ``code`` (any system). Empty codings, such as
    the sandbox's ``{"coding": [{}]}``, never match.
    """
    code = service_request.get("code")
    if not isinstance(code, dict):
        return False
    for coding in code.get("coding") or ():
        if not isinstance(coding, dict) or not coding.get("code"):
            continue
        system, value = str(coding.get("system") or "").rstrip("/"), str(coding["code"])
        for wanted in codes:
            w_system, _, w_code = wanted.rpartition("|")
            if value == w_code and (not w_system or w_system.rstrip("/") == system):
                return True
    return False
