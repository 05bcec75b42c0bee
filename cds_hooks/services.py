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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cds_hooks.errors import BadRequest, UnknownService


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
        a malformed ``draftOrders`` or ``selections``.
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
    if not isinstance(context.get("patientId"), str):
        raise BadRequest("context.patientId must be a string (a bare Patient.id)")
    if hook in ("order-select", "order-sign"):
        _check_draft_orders(context)
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise BadRequest("prefetch must be an object of key -> FHIR resource")
    return HookRequest(hook=hook, hook_instance=hook_instance, context=context,
                       fhir_server=fhir_server.rstrip("/") if fhir_server else None,
                       fhir_authorization=fhir_authorization, prefetch=prefetch)


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
