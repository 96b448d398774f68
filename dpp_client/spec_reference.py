"""The SessionSpec reference (``docs/spec-reference.md``), generated from the code.

Owns the rendering only: every field, its type and default come from the dataclasses of
:mod:`dpp_client.spec`, its meaning from their docstrings (the ``Attributes:`` sections),
what a 0 stands for from :mod:`dpp_proto.defaults`; only the examples are written here.
``tests/unit/client/test_spec_reference.py`` fails when the page and the code disagree, so
the reference cannot drift. Regenerate it with::

    python -m dpp_client.spec_reference > docs/spec-reference.md

Must never import ``dpp_server`` or ``storage`` (it is part of the client).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from dpp_client.spec import Feature, Op, SessionSpec
from dpp_proto import defaults

__all__ = ["EXAMPLES", "field_docs", "render"]

#: One YAML example per field, by class; a test checks that every field has one.
EXAMPLES: dict[type, dict[str, str]] = {
    SessionSpec: {
        "table_uri": "table_uri: s3://warehouse/ctr_events",
        "features": "features: [{name: d0, kind: dense, source: dense_0}]",
        "batch_size": "batch_size: 4096",
        "label": "label: clicked",
        "weight": "weight: importance",
        "passthrough": "passthrough: [row_id, user_id]",
        "partition_filter": "partition_filter: \"ds >= '2026-01-02'\"",
        "row_filter": "row_filter: 'dense_0 IS NOT NULL AND label IN (0, 1)'",
        "epochs": "epochs: 3",
        "seed": "seed: 42",
        "world_size": "world_size: 8",
        "target_split_rows": "target_split_rows: 131072",
        "shuffle": "shuffle: true",
        "storage_options": "storage_options: {endpoint_url: 'http://127.0.0.1:9000'}",
        "deterministic": "deterministic: true",
        "max_splits_in_flight": "max_splits_in_flight: 16",
        "negative_downsample_rate": "negative_downsample_rate: 0.1",
        "sample_rate": "sample_rate: 0.25",
        "sample_key": "sample_key: row_id",
        "dedup_min_share": "dedup_min_share: 0.3",
        "share": "share: true",
    },
    Feature: {
        "name": "name: user_history",
        "kind": "kind: sparse",
        "source": "source: sparse_3",
        "ops": "ops: [{op: first_x, x: 20}, {op: sigrid_hash, max_value: 100000}]",
        "dedup_group": "dedup_group: user",
    },
    Op: {
        "op": "op: clamp",
        "params": "{op: clamp, min: 0.0, max: 10.0}  # params sit flat beside op in YAML",
    },
}

_ENTRY = re.compile(r"^(\w+): ?(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s docstring: field name -> its text, joined."""
    doc = inspect.getdoc(cls) or ""
    lines = doc.split("Attributes:", 1)[1].splitlines() if "Attributes:" in doc else []
    docs: dict[str, str] = {}
    current = ""
    for line in lines:
        if line and not line.startswith(" "):
            break  # the section ended
        text = line.strip()
        if line.startswith("    ") and not line.startswith("        "):
            match = _ENTRY.match(text)
            if match:
                current = match.group(1)
                docs[current] = match.group(2)
                continue
        if current and text:
            docs[current] += " " + text
    return docs


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    text = str(hint)
    return re.sub(r"\b(?:[a-z_]+\.)+([A-Za-z_]+)", r"\1", text).replace("typing.", "")


def _default(cls: type, field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value: Any = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    text = "`" + _yaml(value) + "`"
    if cls is SessionSpec and field.name in defaults.SPEC_ZERO_MEANS:
        means = defaults.SPEC_ZERO_MEANS[field.name]
        if value != means:
            text += f" (means {_yaml(means)})"
    return text


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    if isinstance(value, tuple | list):
        return "[]" if not value else repr(list(value))
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    return repr(value)


def _table(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = ["| field | type | default | meaning | example |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        meaning = docs[field.name].replace("|", "\\|")
        example = EXAMPLES[cls][field.name].replace("|", "\\|")
        out.append(
            f"| `{field.name}` | `{_type_name(hints[field.name])}` | {_default(cls, field)} "
            f"| {meaning} | `{example}` |"
        )
    return out


def render() -> str:
    """The whole reference page, as ``docs/spec-reference.md`` holds it."""
    lines = [
        "# SessionSpec reference",
        "",
        "<!-- Generated by `python -m dpp_client.spec_reference > docs/spec-reference.md`",
        "     from dpp_client/spec.py and dpp_proto/defaults.py; a test fails when they",
        "     disagree. Do not edit by hand. -->",
        "",
        "Every field a trainer can set, in Python (`SessionSpec(...)`) or YAML",
        "(`DppLoader(master, 'spec.yaml')`); field names are the same in both, and in",
        "`spec.proto`. The client checks names and types before any RPC; the master checks",
        "everything else when the loader is built (`DppLoader(..., validate=True)`, the",
        "default) and answers `SpecRejectedError` naming the field (see",
        "[errors.md](errors.md)). A numeric field left at 0 takes the default shown in",
        "parentheses. Op names and their parameters: [ops.md](ops.md).",
        "",
        "## SessionSpec",
        "",
        *_table(SessionSpec),
        "",
        "## Feature (each entry of `features`)",
        "",
        *_table(Feature),
        "",
        "## Op (each entry of a feature's `ops`)",
        "",
        *_table(Op),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
