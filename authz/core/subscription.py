"""API subscriptions: which client applications may use which APIs of a tenant (issue 18).

A subscription is one (tenant, client, API) with a status: a client team *requests* it
(``pending``), an administrator *approves* or *rejects* it, and may later *revoke* an approved
one; an approval may carry an expiry. A rule whose API says ``subscription: required`` allows a
token only when its client (the tenant's ``client_claim``) holds an approved, unexpired one.

The check runs on every decision of such a rule and never waits for I/O: it reads the
process's mirror (``SubscriptionSet``), which the app keeps current from the shared store or a
file (authz/app/subscriptions.py): one dict lookup by exact key, O(1) at any number of
subscriptions. The workflow's moves are ``transition`` (a pure function: the same rules
whether the subscriptions live in the store or in a file); every move is an ``Event`` of the
audit trail.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from authz.core.mirror import Mirror
from authz.errors import Reason

__all__ = [
    "LATEST_TIME",
    "LONGEST_APPROVAL",
    "NO_SUBSCRIPTIONS",
    "Action",
    "Event",
    "Status",
    "Subscription",
    "SubscriptionSet",
    "Subscriptions",
    "WorkflowError",
    "transition",
]


# 9999-12-31T23:59:59Z: the last moment RFC 3339 (and the CLI's output) can write. A stored time
# past it, or before the epoch, is a damaged record, not a time.
LATEST_TIME = 253402300799.0
# An approval ending further ahead is a mistake, not a policy: most often milliseconds given as
# seconds (1798761600000 is 2027-01-01 in ms, year 58970 in s).
LONGEST_APPROVAL = 100 * 365.25 * 86400.0


class Status(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    REVOKED = "revoked"


class Action(enum.StrEnum):
    REQUEST = "request"
    APPROVE = "approve"
    REJECT = "reject"
    REVOKE = "revoke"


# What a check of a subscription in each status answers (approved: allowed until its expiry).
_DENIED = {
    Status.PENDING: Reason.SUBSCRIPTION_PENDING,
    Status.REJECTED: Reason.SUBSCRIPTION_REJECTED,
    Status.REVOKED: Reason.SUBSCRIPTION_REVOKED,
}
_FIELDS = (
    "tenant",
    "client",
    "api",
    "status",
    "requested_by",
    "requested_at",
    "request_reason",
    "decided_by",
    "decided_at",
    "decision_reason",
    "expires",
)


@dataclass(frozen=True, slots=True)
class Subscription:
    """One client's subscription to one API of a tenant, as last decided. Times: epoch seconds."""

    tenant: str
    client: str
    api: str
    status: Status
    requested_by: str = ""
    requested_at: float | None = None
    request_reason: str = ""
    decided_by: str = ""  # who approved, rejected or revoked it last
    decided_at: float | None = None
    decision_reason: str = ""
    expires_at: float = math.inf  # an approval holds until then

    @property
    def key(self) -> tuple[str, str, str]:
        """Its identity, in the order a check looks it up: (tenant, API, client)."""
        return (self.tenant, self.api, self.client)

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "client": self.client,
            "api": self.api,
            "status": self.status.value,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at,
            "request_reason": self.request_reason,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "decision_reason": self.decision_reason,
            "expires": None if self.expires_at == math.inf else self.expires_at,
        }

    def to_json(self) -> str:
        """The record as one canonical JSON string (the store's value; equal records, equal strings)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Subscription:
        """A record from ``to_dict``'s shape; ValueError for anything else."""
        if not isinstance(data, Mapping) or set(data) - set(_FIELDS):
            raise ValueError("not a subscription record")
        names: list[str] = []
        for name in ("tenant", "client", "api"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError("a subscription names its tenant, client and api")
            names.append(value)
        status = data.get("status")
        if not isinstance(status, str):
            raise ValueError("a subscription has a status")
        texts = {}
        for name in ("requested_by", "request_reason", "decided_by", "decision_reason"):
            value = data.get(name) or ""
            if not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
            texts[name] = value
        return cls(
            tenant=names[0],
            client=names[1],
            api=names[2],
            status=Status(status),
            requested_at=_moment(data.get("requested_at")),
            decided_at=_moment(data.get("decided_at")),
            expires_at=math.inf if (expires := _moment(data.get("expires"))) is None else expires,
            **texts,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Subscription:
        """Parse ``to_json``; ValueError for anything else."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError):
            raise ValueError("not JSON") from None
        return cls.from_dict(data)


def _moment(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= LATEST_TIME:
        raise ValueError("a time is a number of seconds since the epoch, before year 10000")
    return float(value)


def _event_moment(value: Any) -> float:
    """A time of an audit event: a number, or its text (a stream keeps strings)."""
    moment = float(value)
    if not 0 <= moment <= LATEST_TIME:  # NaN too
        raise ValueError("a time is a number of seconds since the epoch, before year 10000")
    return moment


@dataclass(frozen=True, slots=True)
class Event:
    """One move of the workflow, as the audit trail keeps it."""

    at: float
    action: Action
    tenant: str
    client: str
    api: str
    by: str
    reason: str
    before: Status | None  # None: there was no subscription
    after: Status
    expires_at: float = math.inf
    # The move's entry was written, then the move could not be made (file mode: the file could
    # not be replaced): this repeats it, marked, so that the trail says it did not happen.
    aborted: bool = False

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"aborted": True} if self.aborted else {}
        return extra | {
            "at": self.at,
            "action": self.action.value,
            "tenant": self.tenant,
            "client": self.client,
            "api": self.api,
            "by": self.by,
            "reason": self.reason,
            "from": self.before.value if self.before is not None else None,
            "to": self.after.value,
            "expires": None if self.expires_at == math.inf else self.expires_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """An event from ``to_dict``'s shape (strings for every value, as a stream keeps them, or
        JSON types); ValueError for anything else."""
        try:
            at = _event_moment(data["at"])
            expires = data.get("expires")
            before = data.get("from")
            return cls(
                at=at,
                action=Action(data["action"]),
                tenant=str(data["tenant"]),
                client=str(data["client"]),
                api=str(data["api"]),
                by=str(data.get("by") or ""),
                reason=str(data.get("reason") or ""),
                before=Status(before) if before not in (None, "") else None,
                after=Status(data["to"]),
                expires_at=_event_moment(expires) if expires not in (None, "") else math.inf,
                aborted=data.get("aborted") in (True, "True", "true"),
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError("not an audit event") from None


class WorkflowError(Exception):
    """A move the workflow does not allow; the message says why (nothing was changed)."""


def transition(
    current: Subscription | None,
    action: Action,
    *,
    key: tuple[str, str, str],
    by: str,
    reason: str,
    at: float,
    expires_at: float = math.inf,
) -> tuple[Subscription, Event]:
    """The subscription after ``action`` and the event that records it; WorkflowError if not allowed.

    ``key``: (tenant, API, client). A request makes a subscription pending: a new one, or again
    after a rejection, a revocation or an expired approval. Only a pending one is approved or
    rejected; only an approved one (expired or not) is revoked. Only an approval has an expiry.
    """
    tenant, api, client = key
    if not by.strip():
        raise WorkflowError("who makes the change must be named (--by)")
    if expires_at != math.inf and action is not Action.APPROVE:
        raise WorkflowError("only an approval has an expiry")
    if expires_at <= at:
        raise WorkflowError("the expiry is not in the future")
    if expires_at != math.inf and expires_at - at > LONGEST_APPROVAL:
        raise WorkflowError(
            "the expiry is more than 100 years ahead: give RFC 3339, or seconds (not milliseconds)"
            " since the epoch"
        )
    status = current.status if current is not None else None
    name = f"{client!r} to API {api!r} of tenant {tenant!r}"
    if action is Action.REQUEST:
        if status is Status.PENDING:
            raise WorkflowError(f"the subscription of {name} is pending already")
        if status is Status.APPROVED and current is not None and not current.expired(at):
            raise WorkflowError(f"the subscription of {name} is approved already")
        updated = Subscription(
            tenant, client, api, Status.PENDING, requested_by=by, requested_at=at, request_reason=reason
        )
    else:
        needed = Status.APPROVED if action is Action.REVOKE else Status.PENDING
        if current is None:
            raise WorkflowError(f"there is no subscription of {name}: it must be requested first")
        if status is not needed:
            raise WorkflowError(
                f"the subscription of {name} is {status}: only a {needed} one can be {_DONE[action]}"
            )
        after = {Action.APPROVE: Status.APPROVED, Action.REJECT: Status.REJECTED}.get(action, Status.REVOKED)
        updated = replace(
            current,
            status=after,
            decided_by=by,
            decided_at=at,
            decision_reason=reason,
            expires_at=expires_at if action is Action.APPROVE else current.expires_at,
        )
    event = Event(at, action, tenant, client, api, by, reason, status, updated.status, updated.expires_at)
    return updated, event


_DONE = {Action.APPROVE: "approved", Action.REJECT: "rejected", Action.REVOKE: "revoked"}


class Subscriptions(Protocol):
    """What a check reads: may this client use this API now (or is the state too old to tell)?"""

    @property
    def generation(self) -> int:
        """Changes whenever the subscriptions do: an answer decided at another generation is decided again."""
        ...

    def check(self, tenant: str, api: str, client: str, now: float) -> tuple[Reason, float]:
        """``(ok, expiry)`` for an approved, unexpired subscription; else the deny reason and inf."""
        ...

    def holds(self, generation: int) -> bool:
        """Whether an allow decided at ``generation`` may be repeated now without a check."""
        ...

    def repeated(self) -> None:
        """A kept answer was repeated: counted as a check when the mirror is served stale."""
        ...


class SubscriptionSet(Mirror):
    """The mirror of one process: each subscription's status, by (tenant, API, client).

    What a check needs only: an approved subscription is kept as its expiry (a float), any
    other as its status; who and why stay in the store or the file. Writers (the app's feed,
    on the event loop) call ``put`` and ``replace``.
    """

    __slots__ = ("_index", "_names")

    def __init__(self, records: Iterable[Subscription] = (), *, max_staleness: float | None = None) -> None:
        super().__init__(max_staleness=max_staleness)
        self._index: dict[tuple[str, str, str], float | Status] = {}
        # Tenant and API names are few: one string object each, however many subscriptions.
        self._names: dict[str, str] = {}
        for record in records:
            self._put(record)

    def __len__(self) -> int:
        return len(self._index)

    def check(self, tenant: str, api: str, client: str, now: float) -> tuple[Reason, float]:
        if not self.current():
            return Reason.SUBSCRIPTION_STATE_STALE, math.inf
        found = self._index.get((tenant, api, client))
        if found is None:
            return Reason.SUBSCRIPTION_REQUIRED, math.inf
        if type(found) is float:
            return (Reason.OK, found) if now < found else (Reason.SUBSCRIPTION_EXPIRED, math.inf)
        return _DENIED[found], math.inf  # type: ignore[index]

    def status(self, tenant: str, api: str, client: str) -> Status | None:
        """The status the mirror holds (an expired approval is still approved), or None."""
        found = self._index.get((tenant, api, client))
        if found is None:
            return None
        return Status.APPROVED if type(found) is float else found  # type: ignore[return-value]

    def put(self, record: Subscription) -> bool:
        """Take this record as the subscription's state; True when what checks read changed."""
        if not self._put(record):
            return False
        self.changed()
        return True

    def replace(self, records: Iterable[Subscription]) -> None:
        """Make the subscriptions exactly these (a full resync), as one change."""
        self.adopt(SubscriptionSet(records))

    def adopt(self, fresh: SubscriptionSet) -> None:
        """Take ``fresh``'s subscriptions as one change: built elsewhere (a worker thread, for a
        full load), swapped in here without a loop over them, so checks never wait on a load."""
        self._index, self._names = fresh._index, fresh._names
        self.changed()

    def _put(self, record: Subscription) -> bool:
        names = self._names
        tenant = names.setdefault(record.tenant, record.tenant)
        api = names.setdefault(record.api, record.api)
        key = (tenant, api, record.client)
        approved = record.status is Status.APPROVED
        value: float | Status = float(record.expires_at) if approved else record.status
        if self._index.get(key) == value:
            return False
        self._index[key] = value
        return True


NO_SUBSCRIPTIONS: Subscriptions = SubscriptionSet()
