"""Delivery stage: care-team routing config (YAML) parsed into frozen dataclasses.

A routing file names care teams; each team maps an alert's priority (``high``,
``medium``, ``low``, ``technical`` or ``default``) to a route: a primary endpoint, an
optional failover endpoint, an escalation contact list (one endpoint per level) and a
retry policy. Patients map to teams; unknown patients go to ``default_team``. Failed
deliveries raise a technical alert that goes to ``ops_team`` (``technical`` route).

Every validation error is a :class:`RoutingConfigError` naming the key path, e.g.
``teams.cardiology.routes.high.primary.url``. Secrets are inline (``secret``) or read
from a file (``secret_file``, relative to the routing file); never from the environment.

Webhooks go over HTTPS with certificate verification (the system trust store, or a
route's or endpoint's ``ca_file``); plain ``http://`` is accepted only to a loopback
address or where the route or endpoint says ``allow_insecure_http: true``. Errors and
endpoint names never carry a secret: URLs in messages keep only scheme, host and port
(a webhook URL's path is often itself a credential).

A team's acknowledgement tokens are listed under ``teams.<team>.tokens`` as
``{user, token_hash}`` with ``token_hash: sha256:<64 hex>`` (``cardiowatch token hash``);
the ack API answers a token only for alerts routed to its team.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args
from urllib.parse import urlparse

import yaml

from models.errors import CardiowatchError
from services.access import AckPrincipal, TokenEntry, parse_token_hash
from services.signing import WebhookSecret

__all__ = [
    "RoutingConfigError",
    "PayloadFormat",
    "RouteKey",
    "Endpoint",
    "RetryPolicy",
    "Route",
    "Team",
    "RoutingConfig",
    "EscalationPolicy",
    "load_routing",
    "parse_routing",
    "route_key_for",
    "redact_url",
    "is_loopback_host",
]

PayloadFormat = Literal["native", "fhir", "alertmanager"]
RouteKey = Literal["high", "medium", "low", "technical", "default"]
_FORMATS: tuple[str, ...] = get_args(PayloadFormat)
_ROUTE_KEYS: tuple[str, ...] = get_args(RouteKey)


class RoutingConfigError(CardiowatchError, ValueError):
    """The routing config is invalid; ``path`` is the dotted key that is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One webhook target. ``name`` is its key path, used in logs and failure reasons."""

    name: str
    url: str
    secret: WebhookSecret
    timeout_s: float = 5.0
    format: PayloadFormat = "native"
    ca_file: Path | None = None  # PEM bundle to verify the receiver's certificate with
    allow_insecure_http: bool = False

    def __repr__(self) -> str:  # the URL's path and query may be credentials
        return f"Endpoint(name={self.name!r}, url={redact_url(self.url)!r}, format={self.format!r})"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Full-jitter exponential backoff: sleep ``uniform(0, min(cap, base * 2**n))``.

    Attempts on one endpoint stop at ``max_attempts`` or when the next sleep would end
    after ``total_budget_s`` (counted from the first attempt on that endpoint).
    """

    max_attempts: int = 5
    base_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    total_budget_s: float = 120.0

    def backoff_cap_s(self, attempt: int) -> float:
        """Upper bound of the sleep after failed attempt ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.base_backoff_s * (2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Route:
    primary: Endpoint
    failover: Endpoint | None = None
    escalation: tuple[Endpoint, ...] = ()  # escalation[0] receives level 1
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def endpoints(self) -> tuple[Endpoint, ...]:
        """Endpoints to try in order for a level-0 delivery."""
        return (self.primary,) if self.failover is None else (self.primary, self.failover)

    def escalation_endpoint(self, level: int) -> Endpoint | None:
        """Contact for escalation ``level`` (>= 1); the last contact repeats beyond the list."""
        if level <= 0 or not self.escalation:
            return None
        return self.escalation[min(level, len(self.escalation)) - 1]


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    routes: Mapping[str, Route]

    def route(self, key: str) -> Route:
        r = self.routes.get(key) or self.routes.get("default")
        if r is None:  # parse_routing guarantees one of them
            raise KeyError(f"team {self.name!r} has no route for {key!r} and no default")
        return r


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """How long an unacknowledged alert waits before the next contact level is paged."""

    escalate_after_s: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"high": 120.0, "medium": 600.0}))
    max_level: int = 2
    poll_s: float = 1.0


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    teams: Mapping[str, Team]
    patients: Mapping[str, str]
    default_team: str
    ops_team: str
    escalation: EscalationPolicy = field(default_factory=EscalationPolicy)
    tokens: tuple[TokenEntry, ...] = ()  # ack API tokens of every team

    def team_for(self, patient_id: str) -> Team:
        return self.teams[self.patients.get(patient_id, self.default_team)]

    def route_for(self, patient_id: str, key: str) -> Route:
        """Route for a patient and a route key (see :func:`route_key_for`)."""
        return self.team_for(patient_id).route(key)

    def ops_route(self) -> Route:
        """Route for the dispatcher's own ``delivery_failure`` alerts."""
        return self.teams[self.ops_team].route("technical")


def route_key_for(category: str, priority: str) -> str:
    """Technical alerts use the ``technical`` route; physiological ones their priority."""
    return "technical" if category == "technical" else priority


def redact_url(url: str) -> str:
    """``scheme://host[:port]/...`` without user info, path, query or fragment, for messages."""
    try:
        u = urlparse(url)
        host = u.hostname or "?"
        port = f":{u.port}" if u.port else ""
    except ValueError:
        return "<unparseable url>"
    host = f"[{host}]" if ":" in host else host
    tail = "/..." if (u.path not in ("", "/") or u.query or u.fragment) else ""
    return f"{u.scheme}://{host}{port}{tail}"


def is_loopback_host(host: str | None) -> bool:
    """``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_routing(path: Path | str) -> RoutingConfig:
    """Read and validate a routing YAML file."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise RoutingConfigError("<file>", f"cannot read routing file {str(p)!r}: {e}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: "!!int x", 5000 digits...
        raise RoutingConfigError("<file>", f"routing file {str(p)!r} is not valid YAML: {str(e)[:300]}") from None
    return parse_routing(raw, base_dir=p.parent)


def _map(v: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise RoutingConfigError(path, f"must be a mapping, got {type(v).__name__}")
    return v


def _unknown(d: Mapping[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(map(str, d)) - allowed)
    if extra:
        raise RoutingConfigError(f"{path}.{extra[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _num(d: Mapping[str, Any], key: str, path: str, default: float, lo: float, hi: float) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RoutingConfigError(f"{path}.{key}", f"must be a number, got {v!r}")
    if not lo <= v <= hi:
        raise RoutingConfigError(f"{path}.{key}", f"must be in [{lo}, {hi}], got {v}")
    return float(v)


def _flag(d: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise RoutingConfigError(f"{path}.{key}", f"must be true or false, got {v!r}")
    return v


def _ca_file(d: Mapping[str, Any], path: str, base_dir: Path, default: Path | None) -> Path | None:
    if "ca_file" not in d:
        return default
    raw = d["ca_file"]
    if not isinstance(raw, str) or not raw:
        raise RoutingConfigError(f"{path}.ca_file", f"must be a path, got {type(raw).__name__}")
    f = Path(raw)
    f = f if f.is_absolute() else base_dir / f
    try:  # load it now, so a bad CA file stops the dispatcher at start, not at the first alert
        ssl.create_default_context(cafile=str(f))
    except (OSError, ssl.SSLError, ValueError) as e:  # ValueError: a NUL in the path
        raise RoutingConfigError(f"{path}.ca_file", f"cannot load CA certificates from {str(f)!r}: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
    return f


def _endpoint(v: Any, path: str, base_dir: Path, insecure: bool = False,
              ca_file: Path | None = None) -> Endpoint:
    d = _map(v, path)
    _unknown(d, {"url", "secret", "secret_file", "timeout_s", "format", "ca_file", "allow_insecure_http"}, path)
    url = d.get("url")
    if not isinstance(url, str):
        raise RoutingConfigError(f"{path}.url", f"must be a string, got {type(url).__name__}")
    try:
        u = urlparse(url)
        host = u.hostname
        u.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise RoutingConfigError(f"{path}.url", f"must be an http(s) URL, got {redact_url(url)!r}") from None
    if u.scheme not in ("http", "https") or not u.netloc or not host:
        raise RoutingConfigError(f"{path}.url", f"must be an http(s) URL, got {redact_url(url)!r}")
    insecure = _flag(d, "allow_insecure_http", path, insecure)
    if u.scheme == "http" and not insecure and not is_loopback_host(host):
        raise RoutingConfigError(f"{path}.url", f"must be https:// to a non-loopback host, got "
                                 f"{redact_url(url)!r} (set allow_insecure_http: true to accept plain "
                                 "HTTP on this route)")
    ca = _ca_file(d, path, base_dir, ca_file)
    if u.scheme != "https":
        ca = None  # a route-wide CA file does not concern its plain loopback endpoints
    if "ca_file" in d and u.scheme != "https":
        raise RoutingConfigError(f"{path}.ca_file", f"applies to https:// URLs only, got {redact_url(url)!r}")
    if ("secret" in d) == ("secret_file" in d):
        raise RoutingConfigError(f"{path}.secret", "give exactly one of 'secret' or 'secret_file'")
    if "secret" in d:
        text, spath = d["secret"], f"{path}.secret"
    else:
        spath = f"{path}.secret_file"
        f = Path(str(d["secret_file"]))
        f = f if f.is_absolute() else base_dir / f
        try:
            text = f.read_text().strip()
        except OSError as e:
            raise RoutingConfigError(spath, f"cannot read {str(f)!r}: {e.strerror}") from None
        except ValueError as e:  # a NUL in the path, or a file that is not UTF-8 text
            raise RoutingConfigError(spath, f"cannot read {str(f)!r}: {str(e)[:80]}") from None
    try:
        secret = WebhookSecret.parse(text)
    except ValueError as e:
        raise RoutingConfigError(spath, str(e)) from None
    fmt = d.get("format", "native")
    if fmt not in _FORMATS:
        raise RoutingConfigError(f"{path}.format", f"must be one of {', '.join(_FORMATS)}, got {fmt!r}")
    return Endpoint(name=path, url=url, secret=secret,
                    timeout_s=_num(d, "timeout_s", path, 5.0, 0.001, 300.0), format=fmt,
                    ca_file=ca, allow_insecure_http=insecure)


def _retry(v: Any, path: str, default: RetryPolicy) -> RetryPolicy:
    if v is None:
        return default
    d = _map(v, path)
    _unknown(d, {"max_attempts", "base_backoff_s", "max_backoff_s", "total_budget_s"}, path)
    attempts = d.get("max_attempts", default.max_attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise RoutingConfigError(f"{path}.max_attempts", f"must be an integer in [1, 100], got {attempts!r}")
    base = _num(d, "base_backoff_s", path, default.base_backoff_s, 0.0, 3600.0)
    cap = _num(d, "max_backoff_s", path, default.max_backoff_s, 0.0, 3600.0)
    if cap < base:
        raise RoutingConfigError(f"{path}.max_backoff_s", f"must be >= base_backoff_s ({base}), got {cap}")
    budget = _num(d, "total_budget_s", path, default.total_budget_s, 0.001, 86400.0)
    return RetryPolicy(int(attempts), base, cap, budget)


def _route(v: Any, path: str, base_dir: Path, team_retry: RetryPolicy) -> Route:
    d = _map(v, path)
    _unknown(d, {"primary", "failover", "escalation", "retry", "ca_file", "allow_insecure_http"}, path)
    if "primary" not in d:
        raise RoutingConfigError(f"{path}.primary", "is required")
    esc = d.get("escalation", [])
    if not isinstance(esc, list):
        raise RoutingConfigError(f"{path}.escalation", f"must be a list of endpoints, got {type(esc).__name__}")
    # route-wide TLS settings; an endpoint may override them
    insecure = _flag(d, "allow_insecure_http", path, False)
    ca = _ca_file(d, path, base_dir, None)
    return Route(
        primary=_endpoint(d["primary"], f"{path}.primary", base_dir, insecure, ca),
        failover=None if d.get("failover") is None else _endpoint(d["failover"], f"{path}.failover",
                                                                  base_dir, insecure, ca),
        escalation=tuple(_endpoint(e, f"{path}.escalation.{i}", base_dir, insecure, ca)
                         for i, e in enumerate(esc)),
        retry=_retry(d.get("retry"), f"{path}.retry", team_retry),
    )


def parse_routing(raw: Any, base_dir: Path | str = ".") -> RoutingConfig:
    """Validate a parsed routing document and build a :class:`RoutingConfig`.

    Raises
    ------
    RoutingConfigError
        Naming the dotted key path of the first problem found.
    """
    base = Path(base_dir)
    d = _map(raw, "<root>")
    _unknown(d, {"version", "default_team", "ops_team", "teams", "patients", "escalation"}, "<root>")
    if d.get("version", 1) != 1:
        raise RoutingConfigError("version", f"must be 1, got {d.get('version')!r}")
    teams_raw = _map(d.get("teams"), "teams")
    if not teams_raw:
        raise RoutingConfigError("teams", "must name at least one team")
    teams: dict[str, Team] = {}
    tokens: list[TokenEntry] = []
    for tname, traw in teams_raw.items():
        tpath = f"teams.{tname}"
        td = _map(traw, tpath)
        _unknown(td, {"routes", "retry", "tokens"}, tpath)
        tokens += _tokens(td.get("tokens"), f"{tpath}.tokens", str(tname))
        team_retry = _retry(td.get("retry"), f"{tpath}.retry", RetryPolicy())
        routes_raw = _map(td.get("routes"), f"{tpath}.routes")
        routes: dict[str, Route] = {}
        for key, rraw in routes_raw.items():
            if key not in _ROUTE_KEYS:
                raise RoutingConfigError(f"{tpath}.routes.{key}",
                                         f"unknown priority (allowed: {', '.join(_ROUTE_KEYS)})")
            routes[key] = _route(rraw, f"{tpath}.routes.{key}", base, team_retry)
        missing = [k for k in ("high", "medium", "low", "technical") if k not in routes]
        if missing and "default" not in routes:
            raise RoutingConfigError(f"{tpath}.routes.default",
                                     f"is required when routes lack {', '.join(missing)}")
        teams[str(tname)] = Team(str(tname), MappingProxyType(routes))
    default_team = d.get("default_team")
    if not isinstance(default_team, str) or default_team not in teams:
        raise RoutingConfigError("default_team", f"must name a team ({', '.join(teams)}), got {default_team!r}")
    ops_team = d.get("ops_team", default_team)
    if not isinstance(ops_team, str) or ops_team not in teams:
        raise RoutingConfigError("ops_team", f"must name a team ({', '.join(teams)}), got {ops_team!r}")
    patients_raw = _map(d.get("patients", {}) or {}, "patients")
    patients: dict[str, str] = {}
    for pid, team in patients_raw.items():
        if not isinstance(team, str) or team not in teams:
            raise RoutingConfigError(f"patients.{pid}", f"must name a team ({', '.join(teams)}), got {team!r}")
        patients[str(pid)] = str(team)
    seen: dict[bytes, str] = {}
    for t in tokens:
        if t.digest in seen:
            raise RoutingConfigError(f"teams.{t.principal.team}.tokens",
                                     f"user {t.principal.user!r} has the same token as {seen[t.digest]!r}; "
                                     "each user needs their own")
        seen[t.digest] = t.principal.user
    return RoutingConfig(MappingProxyType(teams), MappingProxyType(patients), str(default_team),
                         str(ops_team), _escalation(d.get("escalation")), tuple(tokens))


def _tokens(v: Any, path: str, team: str) -> list[TokenEntry]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise RoutingConfigError(path, f"must be a list of {{user, token_hash}}, got {type(v).__name__}")
    out: list[TokenEntry] = []
    for i, raw in enumerate(v):
        d = _map(raw, f"{path}.{i}")
        _unknown(d, {"user", "token_hash"}, f"{path}.{i}")
        user = d.get("user")
        if not isinstance(user, str) or not user.strip():
            raise RoutingConfigError(f"{path}.{i}.user", f"must be a non-empty string, got {type(user).__name__}")
        try:
            digest = parse_token_hash(d.get("token_hash"))
        except ValueError as e:  # the message never repeats the value (it may be a plain token)
            raise RoutingConfigError(f"{path}.{i}.token_hash", str(e)) from None
        out.append(TokenEntry(digest, AckPrincipal(user, team)))
    return out


def _escalation(v: Any) -> EscalationPolicy:
    if v is None:
        return EscalationPolicy()
    d = _map(v, "escalation")
    _unknown(d, {"escalate_after_s", "max_level", "poll_s"}, "escalation")
    if "escalate_after_s" not in d:  # an escalation block about levels only keeps the default timing
        return EscalationPolicy(max_level=_level(d), poll_s=_num(d, "poll_s", "escalation", 1.0, 0.01, 60.0))
    after = _map(d.get("escalate_after_s", {}), "escalation.escalate_after_s")
    out: dict[str, float] = {}
    for prio in after:
        if prio not in ("high", "medium", "low"):
            raise RoutingConfigError(f"escalation.escalate_after_s.{prio}", "must be high, medium or low")
        out[str(prio)] = _num(after, prio, "escalation.escalate_after_s", 0.0, 1.0, 86400.0)
    return EscalationPolicy(MappingProxyType(out), _level(d), _num(d, "poll_s", "escalation", 1.0, 0.01, 60.0))


def _level(d: Mapping[str, Any]) -> int:
    level = d.get("max_level", 2)
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 10:
        raise RoutingConfigError("escalation.max_level", f"must be an integer in [0, 10], got {level!r}")
    return level
