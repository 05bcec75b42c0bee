"""One typed settings object, read once from ``CXR_CDS_*`` environment variables and an optional file.

Every value is parsed and checked here, at start-up; a bad value raises ``SettingsError`` naming
the variable and saying what would be accepted. The optional file (``CXR_CDS_SETTINGS_FILE``) is
JSON or TOML whose keys are the field names below (``deadline_s``) or the variable names
(``CXR_CDS_DEADLINE_S``); environment variables win over the file.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from cds_hooks.errors import SettingsError

PREFIX = "CXR_CDS_"

# Chest radiograph order codes (illustrative; confirm with a terminology source at each site).
DEFAULT_CXR_CODES: tuple[str, ...] = (
    "http://loinc.org|36643-5",   # XR Chest 2 Views
    "http://loinc.org|36554-4",   # XR Chest Single view
    "http://loinc.org|42272-5",   # XR Chest PA and Lateral
    "http://loinc.org|24648-8",   # XR Chest PA upright
    "http://loinc.org|36572-6",   # XR Chest AP
    "http://www.ama-assn.org/go/cpt|71045",
    "http://www.ama-assn.org/go/cpt|71046",
    "http://www.ama-assn.org/go/cpt|71047",
    "http://www.ama-assn.org/go/cpt|71048",
)


def _default_db() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cxr-cds" / "cxr-cds.sqlite3"


@dataclass(frozen=True)
class Settings:
    """The service's configuration; construct with :func:`load_settings` (validated)."""

    # imaging source: DICOMweb if a URL is given, else the embedded local folder
    dicomweb_url: str | None = None
    dicomweb_username: str | None = None
    dicomweb_password: str | None = field(default=None, repr=False)        # secrets stay out of repr/logs
    dicomweb_bearer_token: str | None = field(default=None, repr=False)    # instead of username/password
    dicomweb_timeout_s: float = 10.0               # connect and read timeout per PACS request
    dicomweb_retries: int = 2                      # extra attempts on connection errors and 5xx, never 4xx
    dicom_folder: Path | None = None
    pacs_write: str = "off"                        # off | sr: each stored analysis goes to the PACS as a DICOM SR
    max_pixels: int = field(default_factory=lambda: _imaging_max_pixels())   # decompression-bomb guard
    max_bytes: int = field(default_factory=lambda: _imaging_max_bytes())     # largest instance retrieved
    # J2K/HTJ2K decoded at the coarsest resolution level with a short edge >= this (2 x the model's
    # 512 px input, a margin for its LANCZOS resize); 0 = always full resolution
    decode_min_short_edge: int = 1024
    # model
    model: str | None = None                       # local directory or hub id
    model_revision: str | None = None
    quantization: str | None = None                # none | 8bit | 4bit | int4 (None: the loader decides)
    decode: str = "eager"                          # eager | static (static KV cache + torch.compile on CUDA)
    device: str = "auto"
    max_new_tokens: int = 512     # the original's cap
    template: str = "report_context.v1"
    scores: bool = True                            # per-finding P(yes) (finding_question.v1) with each analysis
    backend: str = "hf"                            # hf (in-process transformers) | vllm (decoder on a vLLM server)
    vllm_url: str | None = None                    # the vLLM OpenAI server (backend vllm), e.g. http://vllm:8000
    vllm_timeout_s: float = 120.0                  # per vLLM request (a whole completion)
    vllm_max_payload_bytes: int = 256 * 1024 * 1024   # largest prompt-embeddings request body (base64)
    # service
    auth: str = "jwt"                              # jwt | none (development only)
    trusted_issuers: Mapping[str, Any] = field(default_factory=dict)
    jwt_algorithms: tuple[str, ...] = ("ES384", "RS384")
    jwt_leeway_s: int = 60
    jwks_ttl_s: int = 300
    jwks_refresh_min_s: int = 30
    jwt_max_lifetime_s: int = 3600                 # largest accepted `exp - iat` of a hook JWT
    public_url: str | None = None
    # shared secret a PACS sends as "Authorization: Bearer <token>" on POST /studies/*/analyze only
    pacs_token: str | None = field(default=None, repr=False)
    db: Path = field(default_factory=_default_db)
    # fleet: a PostgreSQL URL makes Postgres the one store and `cxr-cds serve` API-only (workers: `cxr-cds worker`)
    database_url: str | None = field(default=None, repr=False)     # may hold a password
    worker_concurrency: int = 4                    # jobs one inference worker runs at once (fills micro-batches)
    job_lease_s: float = 60.0                      # a claimed job's lease, renewed every lease/3 while it runs
    job_max_attempts: int = 3                      # attempts before a job fails with its reason
    job_retry_delay_s: float = 5.0                 # wait before a failed attempt is retried (doubles each time)
    job_retry_failed_after_s: float = 300.0        # a failed job is tried again when asked after this long
    max_queued: int = 200                          # waiting precomputes beyond which /studies/* answers 503
    worker_heartbeat_s: float = 10.0               # a worker is alive while its heartbeat is younger than 3x this
    fhir_allowlist: tuple[str, ...] = ()
    fhir_timeout_s: float = 3.0
    deadline_s: float = 5.0
    pending_card: bool = True
    cxr_codes: tuple[str, ...] = DEFAULT_CXR_CODES
    critical_findings: tuple[str, ...] = ("pneumothorax",)
    cors_origins: tuple[str, ...] = ()             # browser origins that may call (none: no CORS headers)
    max_request_bytes: int = 16 * 1024 * 1024
    plan_ttl_s: float = 60.0                       # how long a found study/instance choice is reused
    prior_max_days: int = 365                      # the prior compared with: at most this many days earlier
    poll_interval_s: float = 0.0                   # QIDO-RS polling for new CR/DX studies; 0 = off
    source_label: str = "CXR-LLAVA AI draft (cxr-cds)"
    source_url: str | None = None
    # privacy and operations: the key of the accession-number hashes in log lines (unset: random per
    # process), and the bearer secret of GET /metrics (unset with JWT auth: 401 unless metrics_public)
    log_key: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)
    metrics_public: bool = False
    # review page links (cds_hooks.review): HMAC key of the signed, expiring URLs; unset = a random key
    # per process (links die with the process; a fleet of workers or hosts must share one)
    link_secret: str | None = field(default=None, repr=False)
    link_ttl_s: int = 8 * 3600
    write_back: str = "off"                        # off | fhir: an accepted draft is POSTed to the EHR's FHIR server


def _imaging_max_pixels() -> int:
    from imaging import MAX_PIXELS
    return MAX_PIXELS


def _imaging_max_bytes() -> int:
    from imaging import MAX_BYTES
    return MAX_BYTES


def _str(value: str) -> str | None:
    return value.strip() or None


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _positive_float(value: str) -> float:
    v = float(value)
    if not v > 0:
        raise ValueError("must be > 0")
    return v


def _nonneg_float(value: str) -> float:
    v = float(value)
    if v < 0:
        raise ValueError("must be >= 0")
    return v


def _positive_int(value: str) -> int:
    v = int(value)
    if v <= 0:
        raise ValueError("must be > 0")
    return v


def _nonneg_int(value: str) -> int:
    v = int(value)
    if v < 0:
        raise ValueError("must be >= 0")
    return v


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return v
    return parse


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", "card"):
        return True
    if v in ("0", "false", "no", "off", "none"):
        return False
    raise ValueError("must be true/false (or card/none)")


def _list(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.replace("\n", ",").split(",") if p.strip())


def _url(value: str) -> str | None:
    v = value.strip().rstrip("/")
    if not v:
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return v


def _url_list(value: str) -> tuple[str, ...]:
    items = _list(value)
    for item in items:
        if "://" in item:
            _url(item)
    return items


def _quantization(value: str) -> str | None:
    v = value.strip().lower()
    if not v:
        return None
    if v not in ("none", "8bit", "4bit", "int4"):
        raise ValueError("must be one of none, 8bit, 4bit, int4")
    return v


def _algorithms(value: str) -> tuple[str, ...]:
    algs = tuple(a.upper() for a in _list(value))
    bad = [a for a in algs if a not in ("ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS384")]
    if bad or not algs:
        raise ValueError("must list asymmetric algorithms only (ES384, RS384); 'none' and HS* are refused")
    return algs


PACS_TOKEN_MIN = 32


def _secret(value: str) -> str | None:
    v = value.strip()
    if not v:
        return None
    if len(v) < PACS_TOKEN_MIN or any(ord(c) < 33 or ord(c) > 126 for c in v):
        raise ValueError(f"must be at least {PACS_TOKEN_MIN} printable ASCII characters without spaces")
    return v


#: Fields whose values never appear in messages (or logs): a bad value is shown as '<secret>'.
_SECRETS = frozenset({"log_key", "metrics_token", "dicomweb_password", "dicomweb_bearer_token", "pacs_token", "link_secret", "database_url"})


def _database_url(value: str) -> str | None:
    v = value.strip()
    if not v:
        return None
    if not v.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL (the embedded default is SQLite: leave it unset and "
                         "use CXR_CDS_DB for the file)")
    return v


def _origins(value: str) -> tuple[str, ...]:
    out = []
    for item in _list(value):
        parts = urlsplit(item.rstrip("/"))
        if item == "*" or parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            raise ValueError(f"{item!r} is not an origin: list each one as scheme://host[:port] ('*' is refused: "
                             "any web page a clinician opens could read the answers)")
        out.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(out)


def _issuers(value: str) -> Mapping[str, Any]:
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object {"<iss>": {"jku": [...], "jwks_url": ..., "jwks": {...}}}')
    for iss, cfg in data.items():
        if not isinstance(cfg, dict) or not ({"jku", "jwks_url", "jwks"} & set(cfg)):
            raise ValueError(f"issuer {iss!r} needs one of 'jku' (allowlist), 'jwks_url' or 'jwks'")
    return data


# field name -> (parser of the text value, what a good value looks like)
_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "dicomweb_url": (_url, "an absolute URL, e.g. http://127.0.0.1:8042/dicom-web"),
    "dicomweb_username": (_str, "a user name"),
    "dicomweb_password": (_str, "a password"),
    "dicomweb_bearer_token": (_str, "an OAuth2 access token for the PACS (instead of username/password)"),
    "dicomweb_timeout_s": (_positive_float, "seconds per PACS request, e.g. 10"),
    "dicomweb_retries": (_nonneg_int, "extra attempts on PACS connection errors and 5xx answers, e.g. 2; 0 = none"),
    "max_pixels": (_positive_int, "the largest Rows x Columns decoded, e.g. 40000000"),
    "max_bytes": (_positive_int, "the largest DICOM instance retrieved or inflated, in bytes, e.g. 512000000"),
    "decode_min_short_edge": (_nonneg_int, "pixels, e.g. 1024 (JPEG 2000 decoded at reduced resolution "
                                           "down to this short edge); 0 = full resolution"),
    "dicom_folder": (_path, "a directory of .dcm files"),
    "pacs_write": (_choice("off", "sr"), "off, or sr (each stored analysis is written back to the PACS as a "
                                         "DICOM Structured Report over STOW-RS, in the study of the image read)"),
    "model": (_str, "a local checkpoint directory or a hub id such as ECOFRI/CXR-LLAVA-v2"),
    "model_revision": (_str, "a hub revision (commit hash or tag)"),
    "quantization": (_quantization, "none, 8bit, 4bit (bitsandbytes NF4) or int4 (torchao int4, fast on CUDA)"),
    "decode": (_choice("eager", "static"), "eager or static (static KV cache, compiled on CUDA: same tokens, faster)"),
    "device": (_choice("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    "max_new_tokens": (_positive_int, "a positive integer, e.g. 512"),
    "template": (_str, "a prompt template key, e.g. report_context.v1"),
    "scores": (_bool, "true or false (per-finding yes/no probabilities with each analysis)"),
    "backend": (_choice("hf", "vllm"), "hf (in-process transformers) or vllm (the decoder on a vLLM server)"),
    "vllm_url": (_url, "the vLLM OpenAI server's base URL, e.g. http://127.0.0.1:8000"),
    "vllm_timeout_s": (_positive_float, "seconds per vLLM request (a whole completion), e.g. 120"),
    "vllm_max_payload_bytes": (_positive_int, "bytes, e.g. 268435456 (one 2048 x 4096 float32 prompt: ~45 MB)"),
    "auth": (_choice("jwt", "none"), "jwt (production) or none (development only)"),
    "trusted_issuers": (_issuers, 'a JSON object {"<iss>": {"jku": ["https://..."]}}'),
    "jwt_algorithms": (_algorithms, "a comma-separated list such as ES384,RS384"),
    "jwt_leeway_s": (_nonneg_int, "seconds of clock skew allowed, e.g. 60"),
    "jwks_ttl_s": (_nonneg_int, "seconds a JWK Set is cached, e.g. 300"),
    "jwks_refresh_min_s": (_nonneg_int, "minimum seconds between JWK Set refetches, e.g. 30"),
    "jwt_max_lifetime_s": (_positive_int, "the largest accepted JWT lifetime (exp - iat) in seconds, e.g. 3600"),
    "public_url": (_url, "the service's public base URL, e.g. https://cds.example.org"),
    "pacs_token": (_secret, "a shared secret for POST /studies/{uid}/analyze, e.g. from `openssl rand -hex 32`"),
    "db": (_path, "a SQLite file path"),
    "database_url": (_database_url, "a PostgreSQL URL, e.g. postgresql://cxr:secret@db.example.org:5432/cxr"),
    "worker_concurrency": (_positive_int, "jobs one inference worker runs at once, e.g. 4"),
    "job_lease_s": (_positive_float, "seconds a claimed job is leased (renewed while it runs), e.g. 60"),
    "job_max_attempts": (_positive_int, "attempts before a job fails, e.g. 3"),
    "job_retry_delay_s": (_nonneg_float, "seconds before a failed attempt is retried, e.g. 5"),
    "job_retry_failed_after_s": (_nonneg_float, "seconds after which a failed analysis is tried again when a "
                                                "hook or the PACS asks for it, e.g. 300"),
    "max_queued": (_positive_int, "waiting study-arrival jobs before /studies/* answers 503, e.g. 200"),
    "worker_heartbeat_s": (_positive_float, "seconds between inference-worker heartbeats, e.g. 10"),
    "fhir_allowlist": (_url_list, "a comma-separated list of FHIR base URLs or host names"),
    "fhir_timeout_s": (_positive_float, "seconds, e.g. 3"),
    "deadline_s": (_positive_float, "seconds, e.g. 5"),
    "pending_card": (_bool, "card or none"),
    "cxr_codes": (_list, "a comma-separated list of system|code or bare codes"),
    "critical_findings": (_list, "a comma-separated list of finding names, e.g. pneumothorax"),
    "cors_origins": (_origins, "a comma-separated list of browser origins, e.g. https://sandbox.cds-hooks.org"),
    "max_request_bytes": (_positive_int, "a size in bytes, e.g. 16777216"),
    "plan_ttl_s": (_nonneg_float, "seconds a found study and its frontal-instance choice are reused; 0 = never"),
    "prior_max_days": (_positive_int, "days before a study within which an earlier chest radiograph is compared "
                                      "with it, e.g. 365"),
    "poll_interval_s": (_nonneg_float, "seconds between QIDO-RS polls; 0 turns polling off"),
    "source_label": (_str, "a short label for the card source"),
    "source_url": (_url, "an absolute URL about the service"),
    "log_key": (_secret, "a secret shared by every process of the deployment that keys the accession-number "
                         "hashes in log lines, e.g. from `openssl rand -hex 32`"),
    "metrics_token": (_secret, "a bearer secret for GET /metrics, e.g. from `openssl rand -hex 32`"),
    "metrics_public": (_bool, "true to serve GET /metrics without a credential (behind a private network only)"),
    "link_secret": (_secret, "a secret shared by every worker that signs review-page links, e.g. from "
                             "`openssl rand -hex 32`"),
    "link_ttl_s": (_positive_int, "seconds a review-page link stays valid, e.g. 28800 (8 h)"),
    "write_back": (_choice("off", "fhir"), "off, or fhir (an accepted draft is written to the EHR's allowlisted "
                                           "FHIR server)"),
}


def env_name(field_name: str) -> str:
    """The environment variable of a settings field: ``deadline_s`` -> ``CXR_CDS_DEADLINE_S``."""
    return PREFIX + field_name.upper()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"{PREFIX}SETTINGS_FILE={path}: cannot read it ({e.strerror})") from e
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{PREFIX}SETTINGS_FILE={path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({e})") from e
    if not isinstance(data, dict):
        raise SettingsError(f"{PREFIX}SETTINGS_FILE={path}: must hold one object of settings")
    out = {}
    for key, value in data.items():
        name = key[len(PREFIX):].lower() if key.upper().startswith(PREFIX) else key.lower()
        if name not in _PARSERS:
            raise SettingsError(f"{PREFIX}SETTINGS_FILE={path}: unknown setting {key!r}")
        out[name] = value
    return out


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read, parse and validate the settings.

    Parameters
    ----------
    environ : Mapping[str, str], optional
        Where to read ``CXR_CDS_*`` variables from (default ``os.environ``).
    **overrides
        Field values that win over everything (tests, CLI options); already typed.

    Returns
    -------
    Settings

    Raises
    ------
    SettingsError
        A value does not parse or breaks a rule; the message names the variable.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    file = env.get(PREFIX + "SETTINGS_FILE")
    if file:
        raw.update(_read_file(Path(file)))
    for name in _PARSERS:
        if env_name(name) in env:
            raw[name] = env[env_name(name)]
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k != PREFIX + "SETTINGS_FILE"
                     and k[len(PREFIX):].lower() not in _PARSERS)
    if unknown:
        raise SettingsError(f"{unknown[0]} is not a setting; known: "
                            + ", ".join(env_name(n) for n in _PARSERS))
    values: dict[str, Any] = {}
    for name, value in raw.items():
        parse, hint = _PARSERS[name]
        try:
            if isinstance(value, str):
                values[name] = parse(value)
            elif isinstance(value, (list, tuple)) and name not in ("trusted_issuers",):
                values[name] = parse(",".join(str(v) for v in value))
            elif name == "trusted_issuers":
                values[name] = parse(value)
            else:
                values[name] = parse(str(value).lower() if isinstance(value, bool) else str(value))
        except (ValueError, TypeError) as e:
            shown = "'<secret>'" if name in _SECRETS else repr(value)
            raise SettingsError(f"{env_name(name)}={shown} is not valid: {e}; expected {hint}") from None
    values.update(overrides)
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    """Rules across fields."""
    if s.auth == "jwt" and not s.trusted_issuers:
        raise SettingsError(f"{env_name('auth')}=jwt needs {env_name('trusted_issuers')} "
                            '(a JSON object {"<iss>": {"jku": ["https://..."]}}); '
                            f"for development only, set {env_name('auth')}=none")
    if s.auth == "jwt" and not s.public_url:
        # without it the expected `aud` would come from the request's Host header, which the caller controls
        raise SettingsError(f"{env_name('auth')}=jwt needs {env_name('public_url')} (the https base URL the "
                            "EHR calls, e.g. https://cds.example.org): JWT `aud` is checked against it")
    if s.auth == "jwt":
        # the EHR's bearer token would travel in clear text to a plain-http FHIR server
        plain = [u for u in s.fhir_allowlist if u.lower().startswith("http://") and not _loopback_url(u)]
        if plain:
            raise SettingsError(f"{env_name('fhir_allowlist')}: {plain[0]!r} is plain http; the EHR's access "
                                "token would be sent unencrypted: use https (http is accepted for loopback "
                                f"hosts and with {env_name('auth')}=none only)")
    if s.database_url and s.dicomweb_url is None:
        # a fleet's processes may run on several machines: a local folder is not one shared source
        raise SettingsError(f"{env_name('database_url')} (a fleet) needs {env_name('dicomweb_url')}: every API "
                            f"process and worker must read the same PACS; {env_name('dicom_folder')} is for "
                            "the embedded default")
    if s.database_url and s.link_secret is None and s.auth == "jwt":
        raise SettingsError(f"{env_name('database_url')} (a fleet) needs {env_name('link_secret')}: review links "
                            "signed by one API process must verify on every other one")
    if s.dicomweb_url is None and s.dicom_folder is not None and not Path(s.dicom_folder).is_dir():
        raise SettingsError(f"{env_name('dicom_folder')}={str(s.dicom_folder)!r} is not a directory; "
                            f"create it or set {env_name('dicomweb_url')}")
    if s.backend == "vllm" and not s.vllm_url:
        raise SettingsError(f"{env_name('backend')}=vllm needs {env_name('vllm_url')} (the vLLM server serving "
                            "`cxr-cds model export-decoder` output, e.g. http://127.0.0.1:8000)")
    if s.backend == "hf" and s.vllm_url:
        raise SettingsError(f"{env_name('vllm_url')} is set but {env_name('backend')} is hf; set "
                            f"{env_name('backend')}=vllm or unset {env_name('vllm_url')}")
    from prompts import TEMPLATES
    if s.template not in TEMPLATES:
        raise SettingsError(f"{env_name('template')}={s.template!r} is not a prompt template; known: "
                            + ", ".join(sorted(TEMPLATES)))
    unknown = [f for f in s.critical_findings if f not in _finding_names()]
    if unknown:
        raise SettingsError(f"{env_name('critical_findings')}: unknown finding {unknown[0]!r}; known: "
                            + ", ".join(_finding_names()))


def _loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _finding_names() -> tuple[str, ...]:
    from prompts.findings import FINDING_NAMES
    return FINDING_NAMES


def settings_names() -> list[str]:
    """All environment variable names, for ``--help`` texts and docs."""
    return [env_name(f.name) for f in fields(Settings)]
