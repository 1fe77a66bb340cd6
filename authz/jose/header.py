"""Protected headers: size, strict parsing, and the rules common to JWE and JWS."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz.errors import AuthzError, Reason
from authz.jose.encoding import b64decode, parse_json_object

__all__ = ["MAX_HEADER_CHARS", "check_common_header", "check_typ", "parse_claims", "parse_header"]

MAX_HEADER_CHARS = 2048


def parse_header(part: bytes, b64_code: Reason, json_code: Reason) -> Mapping[str, Any]:
    raw = b64decode(part, b64_code)
    try:
        return parse_json_object(raw)
    except ValueError:
        raise AuthzError(json_code, "header is not a strict JSON object") from None


def parse_claims(raw: bytes) -> Mapping[str, Any]:
    try:
        return parse_json_object(raw)
    except ValueError:
        raise AuthzError(Reason.CLAIMS_MALFORMED, "claims are not a strict JSON object") from None


def check_common_header(header: Mapping[str, Any], malformed: Reason) -> None:
    # We implement no critical extension, so any crit (even an empty one) is fatal.
    if "crit" in header:
        raise AuthzError(Reason.CRIT_UNSUPPORTED)
    # A JSON null is not "no kid": it must not open the kid-less lookup.
    if "kid" in header and not isinstance(header["kid"], str):
        raise AuthzError(malformed, "kid is not a string")


def check_typ(typ: Any, allowed: frozenset[str]) -> None:
    if not isinstance(typ, str):
        raise AuthzError(Reason.TYP_NOT_ALLOWED)
    # RFC 7515 4.1.9: "application/" may be omitted; media types are case-insensitive.
    normal = typ.lower().removeprefix("application/")
    if normal not in allowed:
        raise AuthzError(Reason.TYP_NOT_ALLOWED)
