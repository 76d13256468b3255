"""Delivery stage: acknowledgement HTTP API (aiohttp) run inside the dispatcher process.

``POST /v1/alerts/{alert_id}/ack`` and ``/resolve`` with ``Authorization: Bearer <token>``
and an optional JSON body ``{"note": "..."}``; ``GET /v1/alerts?open=true`` lists alerts;
``GET /healthz``. A token belongs to a user in a care team (hashed in the routing file,
see :mod:`services.access`), and the API answers it only for alerts routed to that team.
Answers 401 (no or bad token), 429 with ``Retry-After`` (too many bad tokens from this
address), 400 (malformed body), 403 (unknown alert *or* another team's: the same status
and body, so a token cannot probe which ids exist), 409 (already resolved or closed). A
successful call hands an ack record (``alert_id, action, by, team, ts_ms, note``) to an
:class:`AckSink`, which in the dispatcher produces it to the ``acks`` topic and stops
escalation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from aiohttp import web

from models.errors import CardiowatchError
from services.access import AckPrincipal, BadTokenLimiter, TokenBook
from streaming.events import AlertEvent

__all__ = [
    "AckAction",
    "AckRecord",
    "AlertState",
    "AlertBook",
    "AckSink",
    "TokenFileError",
    "AckRecordError",
    "load_tokens",
    "AckApi",
]

AckAction = Literal["ack", "resolve"]
# open: nobody has acknowledged it; acknowledged: someone has, its condition goes on;
# closed: acknowledged and its condition is over (a latched alert ends so); resolved: a
# person closed it for good.
Status = Literal["open", "acknowledged", "resolved", "closed"]
FINISHED: frozenset[str] = frozenset({"resolved", "closed"})


class TokenFileError(CardiowatchError, ValueError):
    """The ack token file is missing or malformed."""


class AckRecordError(CardiowatchError, ValueError):
    """A record of the ``acks`` topic is not a valid acknowledgement."""


@dataclass(frozen=True, slots=True)
class AckRecord:
    """One acknowledgement or resolution, as written to the ``acks`` topic."""

    alert_id: str
    action: AckAction
    by: str
    ts_ms: int
    note: str | None = None
    team: str | None = None  # the care team of the token used; None in records older than teams

    def to_json(self) -> bytes:
        return json.dumps({"alert_id": self.alert_id, "action": self.action, "by": self.by,
                           "team": self.team, "ts_ms": self.ts_ms, "note": self.note},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> AckRecord:
        """Decode a record of the ``acks`` topic.

        Raises
        ------
        AckRecordError
            Not JSON, not an object, or a missing or mistyped field (named).
        """
        try:
            d = json.loads(raw)
        except (ValueError, TypeError, RecursionError) as e:
            raise AckRecordError(f"ack record must be UTF-8 JSON: {str(e)[:120]}") from None
        if not isinstance(d, dict) or d.get("action") not in ("ack", "resolve"):
            raise AckRecordError(f"ack record must be an object with action ack|resolve, got {str(raw)[:80]!r}")
        for name in ("alert_id", "by"):
            if not isinstance(d.get(name), str) or not d[name]:
                raise AckRecordError(f"ack record field {name!r} must be a non-empty string, got {d.get(name)!r:.60}")
        ts = d.get("ts_ms")
        if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**63:
            raise AckRecordError(f"ack record field 'ts_ms' must be epoch milliseconds, got {ts!r:.60}")
        note, team = d.get("note"), d.get("team")
        for name, v in (("note", note), ("team", team)):
            if v is not None and not isinstance(v, str):
                raise AckRecordError(f"ack record field {name!r} must be a string or null, got {v!r:.60}")
        return cls(d["alert_id"], d["action"], d["by"], ts, note, team)


@dataclass(frozen=True, slots=True)
class AlertState:
    alert_id: str
    patient_id: str
    condition: str
    category: str
    priority: str
    status: Status
    onset_ts_ms: int
    escalation_level: int
    acknowledged_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class AlertBook:
    """What the ack API and the gauges need to know: each alert's latest status.

    Alerts not yet finished are all kept (their number is what is really open). A
    finished one (resolved, or acknowledged with its condition over) is kept for
    ``retention_ms`` after it finished, so a late ack of a recent alert still gets 409
    rather than 403, then :meth:`forget` drops it; at most ``max_finished`` finished ones
    are kept in any case (the oldest go first), so a dispatcher running for months stays
    bounded.

    Parameters
    ----------
    max_finished : int
        Cap on finished alerts kept, whatever their age.
    retention_ms : int
        How long a finished alert is kept, in milliseconds of event time (the log time of
        the record that finished it; :meth:`forget` is given the current time).
    """

    def __init__(self, max_finished: int = 10_000, retention_ms: int = 24 * 3_600_000) -> None:
        if isinstance(retention_ms, bool) or not isinstance(retention_ms, int) or retention_ms < 0:
            raise ValueError(f"retention_ms must be a non-negative integer, got {retention_ms!r}")
        self._alerts: dict[str, AlertState] = {}
        self._cleared: set[str] = set()  # condition over, alert still latched
        self._finished: dict[str, int] = {}  # alert_id -> finished at (ms); insertion order = oldest first
        self.max_finished = max_finished
        self.retention_ms = retention_ms
        self.dropped: list[str] = []  # ids the max_finished cap dropped, for the caller to collect
        # the latest forget() cutoff: events of unknown alerts from before it are replays
        # of forgotten ones and must not bring them back as open
        self._horizon_ms: int | None = None

    def _settle(self, alert_id: str, now_ms: int) -> None:
        st = self._alerts[alert_id]
        if st.status == "acknowledged" and alert_id in self._cleared:
            st = self._alerts[alert_id] = replace(st, status="closed")
        if st.status in FINISHED:
            self._cleared.discard(alert_id)
            self._finished.pop(alert_id, None)
            self._finished[alert_id] = now_ms
            while len(self._finished) > self.max_finished:
                oldest = next(iter(self._finished))
                del self._finished[oldest]
                self._alerts.pop(oldest, None)
                self.dropped.append(oldest)

    def observe(self, ev: AlertEvent, now_ms: int | None = None) -> None:
        """Apply one event of the alerts log; ``now_ms`` is its log time (default: its
        ``detected_ts_ms``), which starts a finished alert's retention."""
        now_ms = ev.detected_ts_ms if now_ms is None else now_ms
        cur = self._alerts.get(ev.alert_id)
        if cur is not None and cur.status in FINISHED:
            return  # finished is final: later events of it (replays, echoes) change nothing
        if cur is None and self._horizon_ms is not None and now_ms <= self._horizon_ms:
            return  # a replayed record of an alert forgotten after the retention
        if ev.action == "cleared":
            self._cleared.add(ev.alert_id)
        elif ev.action in ("raised", "updated"):
            self._cleared.discard(ev.alert_id)
        if ev.action == "resolved":
            status: Status = "resolved"
        elif ev.action == "cleared":
            # The condition ended but the alert stays latched (and escalating) until a
            # person acknowledges or resolves it, so it must stay acknowledgeable.
            status = cur.status if cur is not None else "open"
        elif ev.action == "acknowledged":
            status = "acknowledged" if cur is None or cur.status != "resolved" else "resolved"
        else:
            status = cur.status if cur is not None else "open"
        self._alerts[ev.alert_id] = AlertState(
            ev.alert_id, ev.patient_id, ev.condition, ev.category, ev.priority, status,
            ev.onset_ts_ms, max(ev.escalation_level, cur.escalation_level if cur else 0),
            cur.acknowledged_by if cur else None)
        self._settle(ev.alert_id, now_ms)

    def apply(self, rec: AckRecord) -> None:
        """Apply an ack record (its ``ts_ms`` starts a finished alert's retention)."""
        cur = self._alerts.get(rec.alert_id)
        if cur is None or cur.status in FINISHED:
            return
        self._alerts[rec.alert_id] = replace(
            cur, status="resolved" if rec.action == "resolve" else "acknowledged",
            acknowledged_by=cur.acknowledged_by or rec.by)
        self._settle(rec.alert_id, rec.ts_ms)

    def forget(self, now_ms: int) -> list[str]:
        """Drop the finished alerts that finished ``retention_ms`` or more before
        ``now_ms`` (and any the ``max_finished`` cap dropped since the last call). From
        then on an event of an unknown alert logged at or before that cutoff (a replay of
        a forgotten alert) is ignored.

        Returns
        -------
        list of str
            The alert ids forgotten; unfinished alerts are never among them.
        """
        cutoff = now_ms - self.retention_ms
        self._horizon_ms = cutoff if self._horizon_ms is None else max(self._horizon_ms, cutoff)
        gone = [a for a, t in self._finished.items() if t <= cutoff]
        for a in gone:
            del self._finished[a]
            self._alerts.pop(a, None)
        gone.extend(self.dropped)
        self.dropped = []
        return gone

    def export(self, alert_id: str) -> dict[str, Any] | None:
        """One alert's entry, JSON-safe, for the dispatcher's alert-state topic."""
        st = self._alerts.get(alert_id)
        if st is None:
            return None
        return {**st.to_dict(), "cleared": alert_id in self._cleared,
                "finished_ms": self._finished.get(alert_id)}

    def restore(self, d: Mapping[str, Any]) -> None:
        """Inverse of :meth:`export` (replaces what is held for that alert).

        Raises
        ------
        ValueError
            A missing or mistyped field, named.
        """
        fields = AlertState.__dataclass_fields__
        missing = [k for k in fields if k not in d and k != "acknowledged_by"]
        if missing:
            raise ValueError(f"alert book entry lacks {missing}")
        if d["status"] not in ("open", "acknowledged", "resolved", "closed"):
            raise ValueError(f"alert book entry status must be open|acknowledged|resolved|closed, "
                             f"got {d['status']!r}")
        st = AlertState(**{k: d[k] for k in fields if k in d})
        a = st.alert_id
        self._alerts[a] = st
        self._cleared.discard(a)
        self._finished.pop(a, None)
        if d.get("cleared"):
            self._cleared.add(a)
        if st.status in FINISHED:
            t = d.get("finished_ms")
            self._finished[a] = int(t) if isinstance(t, int) and not isinstance(t, bool) else 0

    def __len__(self) -> int:
        return len(self._alerts)

    def get(self, alert_id: str) -> AlertState | None:
        return self._alerts.get(alert_id)

    def alerts(self, open_only: bool = False) -> list[AlertState]:
        return [a for a in self._alerts.values() if not open_only or a.status not in FINISHED]

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(open, unacknowledged) counts by priority."""
        open_: dict[str, int] = {p: 0 for p in ("high", "medium", "low")}
        unack = dict(open_)
        for a in self._alerts.values():
            if a.status not in FINISHED:
                open_[a.priority] = open_.get(a.priority, 0) + 1
            if a.status == "open":
                unack[a.priority] = unack.get(a.priority, 0) + 1
        return open_, unack


class AckSink(Protocol):
    async def publish(self, record: AckRecord) -> None:
        """Make the ack durable (acks topic) and apply it (book, escalation tracker)."""
        ...


def load_tokens(path: Path | str) -> dict[str, str]:
    """Read an old plain YAML or JSON mapping ``token -> user``.

    The dispatcher no longer reads such files (tokens are hashed per team in the routing
    file); ``cardiowatch token hash --from-tokens-file`` converts one with this.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError, ValueError, RecursionError) as e:
        raise TokenFileError(f"ack tokens file {str(p)!r} cannot be read: {e}") from None
    if not isinstance(raw, Mapping) or not raw:
        raise TokenFileError(f"ack tokens file {str(p)!r} must be a non-empty mapping token -> user")
    out: dict[str, str] = {}
    for tok, user in raw.items():
        if not isinstance(tok, str) or len(tok) < 16 or not isinstance(user, str) or not user:
            raise TokenFileError(f"ack tokens file {str(p)!r}: entry for user {user!r} needs a "
                                 "string token of at least 16 characters and a user name")
        out[tok] = user
    return out


class AckApi:
    """The aiohttp application; ``start()`` binds ``127.0.0.1:port`` (0 picks one).

    Parameters
    ----------
    book : AlertBook
        Alerts and their statuses.
    tokens : TokenBook
        Bearer tokens (hashed) and the user and team each identifies.
    sink : AckSink
        Where successful acks and resolutions go.
    team_of : callable
        The care team an alert is routed to; a token sees and acts on only its team's.
    limiter : BadTokenLimiter, optional
        Bad-token limit per client address; default 5 in a burst, then one per 10 s.
    """

    def __init__(self, book: AlertBook, tokens: TokenBook, sink: AckSink, *,
                 team_of: Callable[[AlertState], str], limiter: BadTokenLimiter | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._book, self._tokens, self._sink, self._team_of = book, tokens, sink, team_of
        self._limiter = limiter if limiter is not None else BadTokenLimiter()
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/alerts", self._list)
        app.router.add_post("/v1/alerts/{alert_id}/ack", self._ack)
        app.router.add_post("/v1/alerts/{alert_id}/resolve", self._resolve)
        self.app = app

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        if self._port == 0:
            self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _principal(self, request: web.Request) -> AckPrincipal | web.Response:
        """The caller, or the 401/429 answer. A locked-out address is refused before its
        token is looked at, so a good guess made while locked out teaches nothing."""
        client = request.remote or "?"
        auth = request.headers.get("Authorization")
        wait_s = self._limiter.retry_after_s(client)
        if wait_s > 0 and auth is not None:
            resp = _err(429, "too many bad tokens from this address; retry later")
            resp.headers["Retry-After"] = str(wait_s)
            return resp
        scheme, _, token = (auth or "").partition(" ")
        principal = self._tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            if auth is not None:  # a credential was offered and was wrong: count it
                self._limiter.failed(client)
            return _err(401, "missing or invalid bearer token")
        return principal

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _list(self, request: web.Request) -> web.Response:
        who = self._principal(request)
        if isinstance(who, web.Response):
            return who
        open_only = request.query.get("open", "false").lower() in ("1", "true", "yes")
        return web.json_response({"alerts": [a.to_dict() for a in self._book.alerts(open_only)
                                             if self._team_of(a) == who.team]})

    async def _ack(self, request: web.Request) -> web.Response:
        return await self._act(request, "ack")

    async def _resolve(self, request: web.Request) -> web.Response:
        return await self._act(request, "resolve")

    async def _act(self, request: web.Request, action: AckAction) -> web.Response:
        who = self._principal(request)
        if isinstance(who, web.Response):
            return who
        note: str | None = None
        raw = await request.read()
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                return _err(400, "body must be JSON")
            if not isinstance(body, dict) or set(body) - {"note"}:
                return _err(400, f"body must be an object with only 'note', got {str(raw[:80])!r}")
            note = body.get("note")
            if note is not None and (not isinstance(note, str) or len(note) > 2000):
                return _err(400, "note must be a string of at most 2000 characters")
        alert_id = request.match_info["alert_id"]
        state = self._book.get(alert_id)
        if state is None or self._team_of(state) != who.team:
            # the same answer for both, so a token cannot tell another team's ids from none
            return _err(403, f"no alert {alert_id!r} for team {who.team!r}")
        if state.status in FINISHED:
            return _err(409, f"alert {alert_id!r} is already {state.status}")
        rec = AckRecord(alert_id, action, who.user, int(time.time() * 1000), note, who.team)
        await self._sink.publish(rec)
        return web.json_response({"alert_id": alert_id, "action": action, "by": who.user,
                                  "team": who.team, "ts_ms": rec.ts_ms, "note": note})


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
