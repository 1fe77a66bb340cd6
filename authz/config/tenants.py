"""The tenants of the model -> the core's TenantIndex: the checks across tenants, issuers and keys.

Names, hosts and issuers must agree across the file; rules compile their path patterns and
name only their tenant's APIs; an encrypt-only key speaks only for the issuers it is bound to.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from msgspec import UNSET

from authz.config import model as m
from authz.config.yaml import Place
from authz.core.policy import (
    DEFAULT_CLIENT_CLAIMS,
    Api,
    Mode,
    Rule,
    SenderConstraint,
    Tenant,
    TenantIndex,
    compile_path,
    overlap,
)
from authz.jose.htu import canonical_origin
from authz.jose.keys import IssuerKeys, KeySet

__all__ = ["compile_tenants"]


def compile_tenants(
    tenants: Sequence[m.Tenant], root: Place, issuers: dict[str, IssuerKeys], keys: KeySet
) -> TenantIndex:
    by_name: dict[str, Tenant] = {}
    by_host: dict[str, Tenant] = {}
    by_suffix: dict[str, Tenant] = {}
    issuer_use: dict[str, int] = {}
    for index, spec in enumerate(tenants):
        place = root.key("tenants").item(index)
        tenant = _tenant(spec, place, issuers, keys)
        if tenant.name in by_name:
            raise place.key("name").error("duplicate tenant name")
        by_name[tenant.name] = tenant
        for host in tenant.hosts:
            table, name = (by_suffix, host[1:]) if host.startswith("*.") else (by_host, host)
            if name in table:
                raise place.key("hosts").error(
                    f"host {host!r} belongs to tenant {table[name].name!r} already"
                )
            table[name] = tenant
        for issuer in tenant.issuers:
            issuer_use[issuer] = issuer_use.get(issuer, 0) + 1
    return TenantIndex(
        by_name=MappingProxyType(by_name),
        by_host=MappingProxyType(by_host),
        by_suffix=tuple(sorted(by_suffix.items(), key=lambda kv: -len(kv[0]))),
        shared_issuers=frozenset(i for i, n in issuer_use.items() if n > 1),
    )


def _tenant(spec: m.Tenant, place: Place, issuers: dict[str, IssuerKeys], keys: KeySet) -> Tenant:
    for issuer in spec.issuers:
        if issuer not in issuers:
            raise place.key("issuers").error(f"issuer {issuer!r} is not configured under issuers")
    encrypt_only = _encrypt_only(spec, place, keys)
    apis = _apis(spec, place)
    rules: list[Rule] = []
    for index, rule_spec in enumerate(spec.rules):
        rule_place = place.key("rules").item(index)
        rule = _rule(rule_spec, rule_place, apis)
        if any(r.name == rule.name for r in rules):
            raise rule_place.key("name").error("duplicate rule name in this tenant")
        rules.append(rule)
    _check_shadowing(spec, place)
    return Tenant(
        name=spec.name,
        issuers=frozenset(spec.issuers),
        audiences=frozenset(spec.audiences),
        hosts=tuple(h.lower() for h in spec.hosts),
        mode=Mode(spec.mode),
        rules=tuple(rules),
        encrypt_only_keys=MappingProxyType(encrypt_only),
        sender_constraint=SenderConstraint(spec.sender_constraint),
        origins=_origins(spec, place),
        apis=MappingProxyType(apis),
        client_claims=DEFAULT_CLIENT_CLAIMS if spec.client_claim is UNSET else (spec.client_claim,),
        client_issuer=_client_issuer(spec, place, apis),
    )


def _client_issuer(spec: m.Tenant, place: Place, apis: dict[str, Api]) -> str | None:
    """The issuer whose client ids the tenant's subscriptions name.

    A client id is an issuer's name for an application (RFC 7591, RFC 9068): two issuers may
    give the same id to two applications, so a subscription names one issuer's client. With
    one issuer it is that one; with several, a tenant whose APIs require subscriptions must say.
    """
    if spec.client_issuer is not UNSET:
        if spec.client_issuer not in spec.issuers:
            raise place.key("client_issuer").error(
                f"issuer {spec.client_issuer!r} is not one of this tenant's issuers"
            )
        return spec.client_issuer
    if len(spec.issuers) == 1:
        return spec.issuers[0]
    required = sorted(api.name for api in apis.values() if api.subscription)
    if required:
        raise place.key("issuers").error(
            f"the tenant has {len(spec.issuers)} issuers and API {required[0]!r} requires "
            "subscriptions: set client_issuer to the issuer whose client ids its subscriptions "
            f"name (client ids are per issuer), e.g. client_issuer: {spec.issuers[0]}"
        )
    return None


def _apis(spec: m.Tenant, place: Place) -> dict[str, Api]:
    apis: dict[str, Api] = {}
    for index, api in enumerate(spec.apis):
        if api.name in apis:
            raise place.key("apis").item(index).key("name").error("duplicate API name in this tenant")
        apis[api.name] = Api(api.name, subscription=api.subscription == "required")
    return apis


def _check_shadowing(spec: m.Tenant, place: Place) -> None:
    """Refuse a rule that matches requests of a later rule of an API requiring subscriptions.

    The first matching rule decides, and only its API's subscription is checked: an earlier
    rule of no API, of another API or public, matching some of the same method and path,
    would let those requests through without the subscription, and nothing would say so.
    """
    required = {api.name for api in spec.apis if api.subscription == "required"}
    for later_index, later in enumerate(spec.rules):
        if later.api is UNSET or later.api not in required:
            continue
        for index, earlier in enumerate(spec.rules[:later_index]):
            if earlier.api == later.api:
                continue
            example = _shared_request(earlier, later)
            if example is not None:
                where = place.key("rules").item(index)
                raise where.error(
                    f"rule {earlier.name!r} matches requests of rule {later.name!r} (e.g. {example}) "
                    f"before it, so they would pass without the subscription API {later.api!r} "
                    f"requires: move it below, narrow its methods or paths, or give it api: {later.api}"
                )


def _shared_request(first: m.Rule, second: m.Rule) -> str | None:
    """A request (method and path) both rules match, or None."""
    methods = {x.upper() for x in first.methods}, {x.upper() for x in second.methods}
    if all(methods):
        common = sorted(methods[0] & methods[1])
        if not common:
            return None
        method = common[0]
    else:
        method = min(methods[0] or methods[1], default="GET")  # both any method: GET is one
    for pattern in first.paths:
        for other in second.paths:
            path = overlap(pattern, other)
            if path is not None:
                return f"{method} {path}"
    return None


def _origins(spec: m.Tenant, place: Place) -> tuple[str, ...]:
    """The tenant's public origins in canonical form (scheme://host[:port], the default port left out)."""
    origins: list[str] = []
    for index, origin in enumerate(spec.origins):
        try:
            canonical = canonical_origin(origin)
        except ValueError as exc:
            raise place.key("origins").item(index).error(f"{origin!r}: {exc}") from None
        if canonical in origins:
            raise place.key("origins").item(index).error(f"{origin!r} is listed twice")
        origins.append(canonical)
    return tuple(origins)


def _encrypt_only(spec: m.Tenant, place: Place, keys: KeySet) -> dict[str, frozenset[str]]:
    """``encrypt_only_keys``: each symmetric kid with the issuers its tokens may name.

    Without a JWS the shared key is the only proof of who made a token, so a key
    speaks for the issuers it is bound to, not for every issuer of the tenant. A
    bare kid is bound to the tenant's one issuer; with several it must say which.
    """
    bound: dict[str, frozenset[str]] = {}
    issuers: tuple[str, ...]
    for index, entry in enumerate(spec.encrypt_only_keys):
        where = place.key("encrypt_only_keys").item(index)
        if isinstance(entry, str):
            if len(spec.issuers) != 1:
                raise where.error(
                    f"the tenant has {len(spec.issuers)} issuers: bind the key to the ones it may speak "
                    f"for, e.g. {{kid: {entry}, issuers: [{spec.issuers[0]}]}}"
                )
            kid, issuers = entry, spec.issuers
        else:
            for issuer in entry.issuers:
                if issuer not in spec.issuers:
                    raise where.key("issuers").error(f"issuer {issuer!r} is not one of this tenant's issuers")
            kid, issuers = entry.kid, entry.issuers
        key = keys.by_kid.get(kid)
        if key is None or not key.symmetric:
            raise where.error(f"{kid!r} is not a symmetric decryption key")
        if kid in bound:
            raise where.error(f"{kid!r} is listed twice")
        bound[kid] = frozenset(issuers)
    return bound


def _rule(spec: m.Rule, place: Place, apis: dict[str, Api]) -> Rule:
    paths = []
    for pattern in spec.paths:
        try:
            paths.append(compile_path(pattern))
        except ValueError as exc:
            raise place.key("paths").error(f"{pattern!r}: {exc}") from None
    if spec.public and (spec.scopes or spec.roles or spec.claims):
        raise place.key("public").error("a public rule cannot also require scopes, roles or claims")
    if spec.public and spec.sender_constraint is not UNSET:
        raise place.key("sender_constraint").error("a public rule takes no token: no sender constraint")
    api = None
    if spec.api is not UNSET:
        api = apis.get(spec.api)
        if api is None:
            known = ", ".join(sorted(apis)) or "none"
            raise place.key("api").error(f"API {spec.api!r} is not one of this tenant's apis ({known})")
        if spec.public and api.subscription:
            raise place.key("api").error(
                f"a public rule takes no token: API {api.name!r} requires subscriptions of clients"
            )
    return Rule(
        name=spec.name,
        methods=frozenset(method.upper() for method in spec.methods),
        paths=tuple(paths),
        public=spec.public,
        scopes=frozenset(spec.scopes),
        roles=frozenset(spec.roles),
        claims=MappingProxyType(dict(spec.claims)),
        sender_constraint=None
        if spec.sender_constraint is UNSET
        else SenderConstraint(spec.sender_constraint),
        api=api.name if api is not None else None,
        subscription=api is not None and api.subscription,
    )
