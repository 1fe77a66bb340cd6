"""Property tests of path patterns: compile_path matches exactly the paths a segment matcher says.

Examples are bounded and derandomized (tests/conftest.py keeps them independent of the run).
"""

from __future__ import annotations

import itertools
import re

from hypothesis import example, given
from hypothesis import strategies as st

from authz.core.policy import Rule, compile_path, overlap
from authz.core.request import normalize_path
from testkit.properties import FAST

# -- path patterns -------------------------------------------------------------------

LITERALS = ["orders", "admin", "a", "x.y", "a+b", "(x)", "[z]", "$", "^", "a|b", "%41", "é", "~u"]
pattern_segments = st.lists(st.sampled_from([*LITERALS, "*"]), max_size=4)


def reference_match(pattern: str, path: str) -> bool:
    """Segment by segment: '*' one non-empty segment, a final '**' any rest (none included)."""
    wanted, got = pattern.split("/")[1:], path.split("/")[1:]
    if wanted[-1] == "**":
        wanted = wanted[:-1]
        got = got[: len(wanted)] if len(got) >= len(wanted) else [*got, "/"]  # "/": matches no segment
    return len(wanted) == len(got) and all(_segment_match(w, g) for w, g in zip(wanted, got, strict=True))


def _segment_match(wanted: str, got: str) -> bool:
    return bool(got) if wanted == "*" else wanted == got


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(pattern_segments)
    tail = draw(st.sampled_from(["", "/**", "/"]))
    if not segments:
        return "/**" if tail == "/**" else "/"
    return "/" + "/".join(segments) + tail


@st.composite
def paths_for(draw: st.DrawFn, pattern: str) -> str:
    """Paths near the pattern: its literals, other words, extra and missing segments."""
    words = [s for s in pattern.split("/") if s not in ("*", "**", "")]
    segments = draw(
        st.lists(st.sampled_from(words or ["a"]) | st.sampled_from([*LITERALS, "zz", "ordersx"]), max_size=6)
    )
    return "/" + "/".join(segments) + draw(st.sampled_from(["", "/"]))


@FAST
@given(
    pattern=patterns(), data=st.data(), methods=st.frozensets(st.sampled_from(["GET", "POST"]), max_size=2)
)
def test_compiled_patterns_match_like_the_reference(pattern, data, methods):
    """compile_path + Rule.matches agree with the segment reference on paths made near the pattern."""
    compiled = compile_path(pattern)
    rule = Rule("r", methods, (compiled,), False, frozenset(), frozenset(), {})
    candidates = ["/", pattern.replace("**", "deep/er").replace("*", "one")]
    candidates += [data.draw(paths_for(pattern)) for _ in range(8)]
    for candidate in candidates:
        path = normalize_path(candidate)
        expected = reference_match(pattern, path)
        assert bool(compiled.fullmatch(path)) == expected, (pattern, path)
        for method in ("GET", "POST", "DELETE"):
            assert rule.matches(method, path) == (expected and (not methods or method in methods))


@FAST
@given(pattern=st.text(max_size=20) | patterns().map(lambda p: p.replace("/", "//", 1)))
@example(pattern="/a/**/b")
@example(pattern="/a*")
@example(pattern="/../a")
def test_compile_path_raises_only_value_error(pattern):
    """Any pattern: a compiled regex or ValueError (configuration reports it with the line)."""
    try:
        compiled = compile_path(pattern)
    except ValueError:
        return
    assert isinstance(compiled, re.Pattern)
    assert pattern.startswith("/")


# -- overlap of two patterns (a rule shadowing a subscription rule) -----------------------------------


def _small_patterns() -> list[str]:
    """Every pattern of up to two segments from a, b and *, with each ending."""
    heads = [[], *[[s] for s in "ab*"], *[[s, t] for s in "ab*" for t in "ab*"]]
    found = {"/", "/**"}
    for head in heads:
        if head:
            found |= {"/" + "/".join(head) + tail for tail in ("", "/**", "/")}
    return sorted(found)


def test_overlap_finds_a_shared_path_exactly_when_one_exists():
    """Exhaustive over small patterns: every path of up to four segments from a, b, c and "" (more
    than a witness ever needs) either matches both (then overlap names one) or not."""
    universe = [
        "/" + "/".join(p) for n in range(1, 5) for p in itertools.product(["a", "b", "c", ""], repeat=n)
    ]
    compiled = {p: compile_path(p) for p in _small_patterns()}
    for first, one in compiled.items():
        for second, two in compiled.items():
            witness = overlap(first, second)
            shared = any(one.fullmatch(path) and two.fullmatch(path) for path in universe)
            assert (witness is not None) == shared, (first, second, witness)
            if witness is not None:
                assert one.fullmatch(witness), (first, second, witness)
                assert two.fullmatch(witness), (first, second, witness)
