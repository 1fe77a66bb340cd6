"""Fuzz target: the memo's reading from the wire (authz/grpc/_wire.c) against protobuf.

    python -m fuzz.fuzz_wire [libFuzzer options] [corpus folders]   # or: make fuzz

The input is a serialized CheckRequest, as the gRPC door receives it. The reading's contract is
the oracle: ``read_wire(data)`` is None, or exactly ``read_repeat(CheckRequest.FromString(data))``,
and only for bytes protobuf parses. A finding is a reading of bytes protobuf rejects, a reading
that differs from read_repeat's (or whose key hashes otherwise), or an exception out of either.

The extension is C that atheris does not instrument (and protobuf's parser is C too), so byte
mutations get little guidance: a custom mutator decodes the input as a tree of fields
(testkit.protowire) and mutates it at the wire level (fields sent twice, messages split and
merged, map entries with extra fields, non-shortest encodings, identity spellings, invalid
UTF-8 ...), falling back to libFuzzer's own mutations for bytes that are not a tree.

An extension built with ``-fsanitize=address,undefined`` catches memory errors, but its runtime
(``LD_PRELOAD``) takes over libFuzzer's coverage symbols: run the target on the normal build to
grow a corpus, then replay the corpus under the sanitizers (``-runs=0`` over its folder).
"""

from __future__ import annotations

import random
import sys

import atheris

with atheris.instrument_imports(include=["authz"]):
    from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
    from authz.grpc.repeat import read_repeat
    from authz.grpc.wire import read_wire
    from fuzz.harness import Finding
from testkit import protowire

if read_wire is None:
    sys.exit("fuzz_wire: the C extension authz.grpc._wire is not built (pip install -e . builds it)")
from authz.grpc import _wire  # type: ignore[attr-defined]  # built, as checked above

READ = read_wire
ROOT = CheckRequest.DESCRIPTOR


def test_one_input(data: bytes) -> None:
    got = READ(data)
    try:
        parsed = CheckRequest.FromString(data)
    except Exception:  # noqa: BLE001 - DecodeError, or invalid UTF-8 in a string field
        if got is not None:
            raise Finding("read bytes protobuf rejects") from None
        _outcome(parsed=False, valid=_wire.valid(data), read=False, readable=False)
        return
    # read_repeat on every parsed message: its branches (and the outcome's, below) are the only
    # coverage libFuzzer sees, so that inputs that reach more of the reading are kept.
    expected = read_repeat(parsed)
    _outcome(parsed=True, valid=_wire.valid(data), read=got is not None, readable=expected is not None)
    if got is None:
        return
    if got != expected:
        raise Finding(f"read otherwise than read_repeat: {got!r} != {expected!r}")
    if expected is not None and hash(got.key) != hash(expected.key):
        raise Finding("a key equal to read_repeat's that hashes otherwise")


def _outcome(*, parsed: bool, valid: bool, read: bool, readable: bool) -> int:
    """One branch per outcome (instrumented: each is a coverage feature)."""
    if not parsed:
        return 1 if valid else 2  # valid: the schema check let through what protobuf rejects (then declined)
    if not valid:
        return 3 if readable else 4
    if read:
        return 5
    return 6 if readable else 7


def mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """A wire-level mutation of ``data`` (1 to 4 of them), or libFuzzer's own when it is no tree."""
    rng = random.Random(seed)  # noqa: S311 - reproducible mutations, not a secret
    if rng.random() < 0.8:
        try:
            tree = protowire.decode(data, ROOT)
        except ValueError:
            pass
        else:
            for _ in range(rng.randint(1, 4)):
                protowire.mutate(rng, tree, ROOT)
            mutated = protowire.encode(tree)
            if len(mutated) <= max_size:
                return mutated
    return atheris.Mutate(data, max_size)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
