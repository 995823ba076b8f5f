"""Hostile inputs, shared by the fuzz tests: values, YAML snippets and byte-level damage."""

from __future__ import annotations

from hypothesis import strategies as st

HOSTILE_NUMBERS = st.sampled_from(
    ["0", "-1", "1", "3", "-0", "1e300", "-1e300", "1e-400", "nan", "inf", "-inf", "NaN",
     "18446744073709551616", "9" * 40, "4294967296", "4294967295", "0x10", "1_000", "2.5",
     " 7", "", " ", "abc", "é", "١٢", "1e3", "0.0", "5000", "1437", "1438"]
)  # fmt: skip
"""Strings given where a number is expected: out of range, not finite, not numbers."""

HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", " ", "-", "--", "--steps", "é", "\u202e", "a" * 300, "%s", "%(prog)s",
                     "{}", "None", "null", "../..", "~", "$HOME", "\\", "\x7f"]),
    st.text(min_size=0, max_size=30).filter(lambda s: "\x00" not in s),
)  # fmt: skip
"""Strings given where a name is expected."""

YAML_VALUES = st.sampled_from(
    ["1e999", "-1", ".nan", ".inf", "-.inf", "~", "[]", "{}", "''", "!!set {a, b}",
     "!!omap [a: 1]", "!!binary aGk=", "2001-12-14", "!mine x", "*nowhere", "&x [*x]",
     "!!python/object/apply:os.system ['true']", "[" * 80 + "]" * 80, "{a: {b: {c: [1]}}}",
     "99999999999999999999999999", "0x1F", "0o17", "yes", "no", "on", "'1.5'", "[a, [b, [c]]]",
     "\"\\uD800\"", "Linear", "re:.*", "__ALL__", "W8A8", "W4A16", "unknown_scheme", "0.5",
     "1.5", "-0.5", "100", "0", "3"]
)  # fmt: skip
"""YAML text put in place of a value."""

YAML_KEYS = st.sampled_from(
    ["1", "null", "~", "true", "? [a, b]", "? {a: b}", "<<", "''", "'1'", "start", "end",
     "targets", "final_sparsity", "scheme", "x_stage", "x_modifiers", "modifiers", "stages",
     "FooModifier", "MagnitudePruningModifier", "ConstantPruningModifier", "a b", "é"]
)  # fmt: skip
"""YAML text put in place of a key."""


@st.composite
def damaged_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few flipped, inserted, deleted or repeated bytes, or cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut", "repeat", "zero"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
        elif kind == "repeat" and data:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        elif kind == "zero" and data:
            data[at : at + 8] = bytes(len(data[at : at + 8]))
    return bytes(data)
