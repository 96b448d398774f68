"""docs/spec-reference.md is generated from the code and must match it (issue 18, rule 3)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dpp_client.spec import Feature, Op, SessionSpec
from dpp_client.spec_reference import EXAMPLES, field_docs, render
from dpp_proto import defaults

DOC = Path(__file__).resolve().parents[3] / "docs" / "spec-reference.md"


def test_the_page_is_what_the_code_generates() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/spec-reference.md is stale: run "
        "`python -m dpp_client.spec_reference > docs/spec-reference.md`"
    )


@pytest.mark.parametrize("cls", [SessionSpec, Feature, Op])
def test_every_field_has_a_meaning_and_an_example_and_nothing_else(cls: type) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    docs = field_docs(cls)
    assert sorted(docs) == sorted(names), "docstring Attributes and fields differ"
    assert all(len(docs[n]) > 10 for n in names)
    assert sorted(EXAMPLES[cls]) == sorted(names)
    for name in names:
        assert EXAMPLES[cls][name].split(":")[0] in (name, "{op")


def test_defaults_shown_are_the_one_home_of_defaults() -> None:
    page = render()
    for name, means in defaults.SPEC_ZERO_MEANS.items():
        field = SessionSpec.__dataclass_fields__[name]
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` "))
        if field.default == means:
            assert f"| `{means}` |" in row
        else:
            assert f"(means {means})" in row


def test_the_documented_examples_are_valid_specs() -> None:
    import yaml

    data = {k: yaml.safe_load(v)[k] for k, v in EXAMPLES[SessionSpec].items() if k != "features"}
    data["features"] = [
        {yaml_key: value for yaml_key, value in yaml.safe_load(v).items()}
        for v in ["{" + ", ".join(e for k, e in EXAMPLES[Feature].items() if k != "ops") + "}"]
    ]
    spec = SessionSpec.from_dict(data)  # the client's own checks accept every example
    assert spec.world_size == 8 and spec.features[0].dedup_group == "user"
