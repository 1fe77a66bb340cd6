"""The decision log: one JSON line per check, written straight to the log handler when it can be.

Nothing from a token reaches it: the decision's fields (names from the configuration and
closed code sets), the method, the normalized path, configured key ids, the sender binding
and a short hash of a DPoP proof's key (never the proof); on a rule whose API requires a
subscription, the client application's id (a name the issuer gives an application, not a
person); the subject only when the configuration enables it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from authz.core.decision import Decision, Verdict
from authz.core.request import AuthzRequest
from authz.core.snapshot import RecordSettings
from authz.telemetry.logs import direct_sink, render_line

__all__ = [
    "DEFAULT_SETTINGS",
    "RepeatedAnswer",
    "decision_fields",
    "subscription_labels",
    "write",
    "write_repeat",
]

DEFAULT_SETTINGS = RecordSettings()
_LOGGER, _MSG = "authz.decision", "decision"
_log = logging.getLogger(_LOGGER)


def decision_fields(
    decision: Decision, request: AuthzRequest | None, settings: RecordSettings
) -> dict[str, Any]:
    """The decision log fields after request and trace id: the same for every repeat of a decision."""
    fields: dict[str, Any] = {
        "tenant": decision.tenant,
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "rule": decision.rule,
        "method": request.method if request else None,
        "path": request.path if request else None,
        "kid": decision.key_id,
        "binding": decision.binding.value,
    }
    if decision.proof_key:
        fields["dpop_key"] = decision.proof_key
    if settings.log_subject:
        fields["subject"] = decision.subject
    if decision.api:
        fields["api"] = decision.api
    if decision.subscription is not None:
        # A rule whose API requires a subscription: the client application it was checked for,
        # and what the check answered (ok, or the deny reason).
        fields["client"] = decision.client
        fields["subscription"] = decision.subscription
    if decision.revocation:
        # token_revoked: which kind of entry matched, and the token by a short hash of its jti.
        fields["revocation"] = decision.revocation
        fields["jti_hash"] = decision.jti_hash
    if decision.detail:
        fields["detail"] = decision.detail
    return fields


@dataclass(frozen=True, slots=True)
class RepeatedAnswer:
    """What recording a repeat of one decision needs, computed when it was first made."""

    labels: tuple[str, str, str]  # authz_checks_total's tenant, decision, reason
    verdict_label: tuple[str]  # authz_check_duration_seconds' decision
    binding_label: tuple[str]  # authz_sender_bindings_total's binding
    subscription_label: tuple[str, str, str] | None  # authz_subscription_checks_total's, if checked
    sample_rate: float  # 1.0 for anything but an allow (denies are always logged)
    log_fields: Mapping[str, Any]  # decision_fields()
    log_tail: str  # those fields as JSON, after the opening brace and request/trace ids

    @classmethod
    def of(
        cls, decision: Decision, request: AuthzRequest | None, settings: RecordSettings | None
    ) -> RepeatedAnswer:
        settings = settings or DEFAULT_SETTINGS
        fields = decision_fields(decision, request, settings)
        verdict = decision.verdict.value
        rate = settings.allow_log_sample_rate if decision.verdict is Verdict.ALLOW else 1.0
        tail = _json(fields)
        return cls(
            labels=(decision.tenant or "", verdict, decision.reason),
            verdict_label=(verdict,),
            binding_label=(decision.binding.value,),
            subscription_label=subscription_labels(decision),
            sample_rate=rate,
            log_fields=MappingProxyType(fields),
            log_tail="}" if tail == "{}" else "," + tail[1:],
        )


def subscription_labels(decision: Decision) -> tuple[str, str, str] | None:
    """authz_subscription_checks_total's tenant, api and result for a decision that checked a
    subscription (result: ok, or the deny reason); None for one that did not."""
    if decision.subscription is None:
        return None
    return (decision.tenant or "", decision.api or "", decision.subscription.value)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # what json.dumps does to a str


def write(
    decision: Decision,
    request: AuthzRequest | None,
    *,
    request_id: str,
    trace_id: Callable[[], str | None],
    settings: RecordSettings,
) -> None:
    """The line of one decided check (``trace_id`` is asked only when a line is written)."""
    rate = settings.allow_log_sample_rate
    # Denies are always logged; allows may be sampled.
    if decision.verdict is Verdict.ALLOW and rate < 1.0 and random.random() >= rate:  # noqa: S311
        return
    sink = direct_sink(_log)
    if sink is None and not _log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": request_id,
        "trace_id": trace_id(),
        **decision_fields(decision, request, settings),
    }
    if sink is not None:
        sink.write_line(render_line(_LOGGER, _MSG, _json(fields), time.time()))
    else:
        _log.info(_MSG, extra={"fields": fields})


def write_repeat(answer: RepeatedAnswer, *, request_id: str, trace_id: str | None) -> None:
    """The line of a check answered from an earlier identical one, its fixed part rendered once.

    On an event loop the line joins the handler's gathered lines unrendered: it is rendered
    with them, a burst at a time, when they are written.
    """
    if answer.sample_rate < 1.0 and random.random() >= answer.sample_rate:  # noqa: S311
        return
    sink = direct_sink(_log)
    if sink is not None:
        sink.write_line((_repeat_line, answer.log_tail, request_id, trace_id, time.time()))
    elif _log.isEnabledFor(logging.INFO):
        fields = {"request_id": request_id, "trace_id": trace_id, **answer.log_fields}
        _log.info(_MSG, extra={"fields": fields})


def _repeat_line(tail: str, request_id: str, trace_id: str | None, when: float) -> str:
    traced = "null" if trace_id is None else _json_str(trace_id)
    ids = f'{{"request_id":{_json_str(request_id)},"trace_id":{traced}'
    return render_line(_LOGGER, _MSG, ids + tail, when)
