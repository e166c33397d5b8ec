"""The search form: every bad field is named; a valid form survives the round trip through links."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from ecgsearch.web.forms import MAX_K, FormError, SearchForm, parse_search


def test_valid_form_and_round_trip() -> None:
    args = MultiDict(
        [
            ("record_id", " ptbxl:17 "),
            ("dx_any", "164889003"),
            ("dx_any", "SCP:NORM"),
            ("dx_none", "59118001"),
            ("age_min", "40"),
            ("age_max", "80"),
            ("sex", "f"),
            ("dataset", "ptbxl, georgia"),
            ("k", "20"),
        ]
    )
    form = parse_search(args)
    assert form.record_id == "ptbxl:17" and form.k == 20
    assert form.flt.diagnoses_any == ["164889003", "SCP:NORM"] and form.flt.diagnoses_none == ["59118001"]
    assert (form.flt.age_min, form.flt.age_max, form.flt.sex) == (40, 80, "F")
    assert form.flt.datasets == ["ptbxl", "georgia"]
    again = parse_search(MultiDict([(k, v) for k, vs in form.query_args().items() for v in _listed(vs)]))
    assert again == form


def _listed(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_empty_form_has_defaults() -> None:
    assert parse_search({}) == SearchForm()


@pytest.mark.parametrize(
    ("args", "field", "reason"),
    [
        ({"k": "abc"}, "k", "'abc' is not a whole number"),
        ({"k": "0"}, "k", f"0 is outside 1-{MAX_K}"),
        ({"k": str(MAX_K + 1)}, "k", "outside"),
        ({"age_min": "-1"}, "minimum age", "outside 0-130"),
        ({"age_max": "1e9"}, "maximum age", "not a whole number"),
        ({"age_min": "80", "age_max": "20"}, "age range", "from 80 is above to 20"),
        ({"sex": "x"}, "sex", "expected M, F or any"),
        ({"record_id": "r" * 1000}, "record id", "longer than 128"),
        ({"dataset": ",".join(["d"] * 17)}, "dataset", "at most 16"),
        ({"dx_any": "AF", "dx_none": "AF"}, "diagnoses", "both required and excluded"),
    ],
)
def test_bad_field_is_named(args: dict[str, str], field: str, reason: str) -> None:
    with pytest.raises(FormError) as info:
        parse_search(args)
    assert info.value.field == field and reason in info.value.reason
