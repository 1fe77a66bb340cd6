"""What the fuzz targets share: the fixed world, our issuers' tokens, the failure type.

A target imports this module inside ``atheris.instrument_imports``, so that
the ``authz`` modules it pulls in are instrumented for coverage.
"""

from __future__ import annotations

import sys
from typing import Any

from jwcrypto.jwe import JWE

from authz.config import Config
from authz.errors import AuthzError
from authz.jose.nested import VerifiedToken, validate_token
from fuzz.world import CORPUS, known_tokens, temporary_world
from testkit.world import World

__all__ = ["Finding", "Start", "boundary_failure", "start"]


class Finding(Exception):  # noqa: N818 - a fuzzing finding, reported as a crash by atheris
    """An oracle violation: atheris reports it as a crash and writes the input to the artifact folder."""


def boundary_failure(exc: AuthzError) -> Finding | None:
    """``token_invalid`` hides an unexpected exception: surface it.

    ``raise ... from None`` still keeps the original in ``__context__``.
    """
    if exc.code != "token_invalid":
        return None
    finding = Finding(f"unexpected exception inside the token layer ({exc.detail})")
    finding.__cause__ = exc.__context__
    return finding


class Start:
    """The fixed world, its configuration and our issuers' tokens, made once at target start-up."""

    def __init__(self) -> None:
        self.world: World
        self.world, self._handle = temporary_world()
        self.config: Config = self.world.config()
        # Our issuers' tokens are the seed corpus's valid-* files, minted by make_corpus with these
        # keys: each must validate here, or the seeds and the world disagree.
        self.tokens: dict[str, VerifiedToken] = {}
        for token in known_tokens():
            try:
                self.tokens[token] = validate_token(token, self.config.snapshot.token_keys)
            except AuthzError as exc:
                sys.exit(
                    f"seed token does not validate ({exc.code}): regenerate with python -m fuzz.make_corpus"
                )
        if not self.tokens:
            print(
                f"warning: no valid-* seeds in {CORPUS / 'fuzz_token'}: every acceptance is a finding",
                file=sys.stderr,
            )

    def inner_jws(self) -> dict[bytes, tuple[bytes, dict[str, Any]]]:
        """Signing input (``header.payload``) -> (the JWS, its claims) of each nested seed token.

        Decrypted by jwcrypto, not by the code under test.
        """
        by_kid = {key["kid"]: key for key in self.world.decryption_keys.values()}
        known: dict[bytes, tuple[bytes, dict[str, Any]]] = {}
        for token, verified in self.tokens.items():
            if not verified.nested:
                continue
            jwe = JWE()
            jwe.deserialize(token, by_kid[verified.decryption_kid])
            jws = bytes(jwe.payload)
            known[jws.rsplit(b".", 1)[0]] = (jws, dict(verified.claims))
        return known


def start() -> Start:
    return Start()
