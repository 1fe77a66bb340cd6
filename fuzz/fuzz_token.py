"""Fuzz target: the token layer on arbitrary input.

    python -m fuzz.fuzz_token [libFuzzer options] [corpus folders]   # or: make fuzz

Input bytes -> str (UTF-8, undecodable bytes as lone surrogates) ->
``validate_token`` with the fixed world's keys (fuzz/world.py). A finding (a
crash, with the input written by libFuzzer) is:

- any exception other than AuthzError, and ``token_invalid`` (the code of an
  unexpected exception caught at the boundary; the original is chained);
- an acceptance of a token that is not byte for byte one of our issuers'
  (the seed corpus's ``valid-*`` tokens);
- ``validate_token`` and ``decrypt_token`` + ``open_token`` disagreeing
  (reason code or verified token).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["authz", "jwcrypto"]):
    from authz.errors import AuthzError
    from authz.jose.nested import VerifiedToken, decrypt_token, open_token, validate_token
    from fuzz.harness import Finding, boundary_failure, start

STATE = start()
KEYS = STATE.config.snapshot.token_keys


def outcome(run: Callable[[], VerifiedToken]) -> VerifiedToken | str:
    try:
        return run()
    except AuthzError as exc:
        finding = boundary_failure(exc)
        if finding is not None:
            raise finding from finding.__cause__
        return exc.code


def test_one_input(data: bytes) -> None:
    token = data.decode("utf-8", "surrogateescape")
    whole = outcome(lambda: validate_token(token, KEYS))
    steps = outcome(lambda: open_token(decrypt_token(token, KEYS), KEYS))
    if whole != steps:
        raise Finding(f"validate_token ({whole!r:.80}) and decrypt_token+open_token ({steps!r:.80}) disagree")
    if isinstance(whole, VerifiedToken) and token not in STATE.tokens:
        raise Finding("accepted a token that is not one of our issuers' tokens")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
