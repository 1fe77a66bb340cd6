"""kubectl for running the deployment guide's commands without a cluster (tests/deploy/test_deploy.py).

What needs no cluster runs for real: ``create secret generic ... --dry-run=client`` and
the render of ``apply -k DIR`` (``kubectl kustomize DIR``). What would reach a cluster
is recorded instead: one JSON line per call in ``$FAKE_KUBECTL_LOG/calls.jsonl``, and
what ``apply`` would send in a file beside it. Any other command fails, so that a
guide's step this fake does not know is noticed rather than skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _split_namespace(argv: list[str]) -> tuple[str | None, list[str]]:
    """The ``-n``/``--namespace`` value and the other arguments."""
    namespace, rest = None, []
    words = iter(argv)
    for word in words:
        if word in ("-n", "--namespace"):
            namespace = next(words)
        elif word.startswith("--namespace="):
            namespace = word.partition("=")[2]
        else:
            rest.append(word)
    return namespace, rest


def main(argv: list[str]) -> int:
    real = os.environ["FAKE_KUBECTL_REAL"]
    log = Path(os.environ["FAKE_KUBECTL_LOG"])
    log.mkdir(parents=True, exist_ok=True)
    calls = log / "calls.jsonl"
    namespace, args = _split_namespace(argv)
    record: dict[str, object] = {"argv": argv, "namespace": namespace}
    manifest: str | None = None
    if args[:3] == ["create", "secret", "generic"]:
        if "--dry-run=client" not in args:
            print("fake kubectl: create without --dry-run=client would need a cluster", file=sys.stderr)
            return 2
        with calls.open("a") as out:
            out.write(json.dumps(record) + "\n")
        return subprocess.run([real, *argv], check=False, timeout=60).returncode
    if args[:2] == ["apply", "-k"] and len(args) == 3:
        done = subprocess.run(
            [real, "kustomize", args[2]], capture_output=True, text=True, check=False, timeout=60
        )
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            return done.returncode
        manifest = done.stdout
    elif args == ["apply", "-f", "-"]:
        manifest = sys.stdin.read()
    elif args[:2] != ["rollout", "status"]:
        print(f"fake kubectl: not a command the tested guide's steps use: {argv}", file=sys.stderr)
        return 2
    if manifest is not None:
        path = log / f"applied-{os.getpid()}.yaml"
        path.write_text(manifest)
        record["manifest"] = str(path)
    with calls.open("a") as out:
        out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
