"""The search form: every bad field is named; a valid form survives the round trip through links."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from ecgsearch.ecg.schema import MEASUREMENTS, EcgPayload, MeasurementRange, SearchFilter
from ecgsearch.search.cli import parse_measures
from ecgsearch.web import measures
from ecgsearch.web.forms import MAX_K, FormError, SearchForm, describe_filter, parse_search
from ecgsearch.web.measures import SPECS


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


def test_measurement_ranges_reach_the_search_filter() -> None:
    args = {"record_id": "ptbxl:17", "qrs_ms_min": "120", "qtc_ms_max": "480.5", "pr_ms_min": "120"}
    args |= {"pr_ms_max": "200", "r_axis_min": "-90", "r_axis_max": " -30 "}
    form = parse_search(args)
    assert form.flt.measurements == [
        MeasurementRange(measurement="pr_ms", min=120, max=200),
        MeasurementRange(measurement="qrs_ms", min=120),
        MeasurementRange(measurement="qtc_ms", max=480.5),
        MeasurementRange(measurement="r_axis", min=-90, max=-30),
    ]
    # The filter the service would receive is the one the CLI's --measure builds for the same ranges.
    measures = ["pr_ms=120..200", "qrs_ms>=120", "qtc<=480.5", "r_axis=-90..-30"]
    assert form.flt == SearchFilter(measurements=parse_measures(measures))
    again = parse_search(MultiDict([(k, v) for k, vs in form.query_args().items() for v in _listed(vs)]))
    assert again == form
    assert parse_search({"qrs_ms_min": "", "qrs_ms_max": " "}).flt.measurements == []


def test_every_measurement_the_service_filters_on_has_a_labelled_field() -> None:
    assert [spec.name for spec in SPECS] == list(MEASUREMENTS)
    form = parse_search({f"{name}_min": "1" for name in MEASUREMENTS})
    assert [r.measurement for r in form.flt.measurements] == list(MEASUREMENTS)


@pytest.mark.parametrize(
    ("args", "field", "reason"),
    [
        ({"qrs_ms_min": "wide"}, "QRS (ms) from", "'wide' is not a number"),
        ({"qtc_ms_max": "nan"}, "QTc (ms) to", "outside -10000 to 10000"),
        ({"pr_ms_min": "inf"}, "PR (ms) from", "outside"),
        ({"ventricular_rate_bpm_max": "1e6"}, "Rate (bpm) to", "outside"),
        ({"qrs_ms_min": "150", "qrs_ms_max": "100"}, "QRS (ms) range", "from 150 is above to 100"),
        ({"t_axis_min": "90", "t_axis_max": "-90"}, "T axis (°) range", "from 90 is above to -90"),
    ],
)
def test_bad_measurement_range_is_named(args: dict[str, str], field: str, reason: str) -> None:
    with pytest.raises(FormError) as info:
        parse_search(args)
    assert info.value.field == field and reason in info.value.reason


def test_measurements_are_shown_with_units() -> None:
    payload = EcgPayload(
        record_id="hospital:x",
        dataset="hospital",
        sampling_rate_hz=500,
        qrs_ms=96.0,
        qtc_ms=403,
        r_axis=-21,
        ventricular_rate_bpm=48.5,
        vendor="GE Healthcare",
        device_model="MAC55",
    )
    texts = [m.text for m in measures.shown(payload)]
    assert texts == ["Rate 48.5 bpm", "QRS 96 ms", "QTc 403 ms", "R axis -21°"]
    assert measures.device(payload) == "GE Healthcare MAC55"
    bare = EcgPayload(record_id="ptbxl:1", dataset="ptbxl", sampling_rate_hz=100)
    assert measures.shown(bare) == [] and measures.device(bare) == ""


# The collection's own diagnoses, as the viewer reads them from CollectionInfo (code -> name).
NAMES = {
    "164889003": "atrial fibrillation",
    "164890007": "atrial flutter",
    "59118001": "right bundle branch block",
    "164909002": "left bundle branch block",
    "SCP:NORM": "normal ECG",
}


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("atrial fibrillation (164889003)", "164889003"),  # an option as the list shows it
        ("fibrill", "164889003"),  # part of one name
        ("ATRIAL FLUTTER", "164890007"),  # a whole name, any case
        ("AF", "164889003"),  # a Challenge abbreviation
        ("scp:norm", "SCP:NORM"),  # a code, any case
        ("right bundle", "59118001"),
    ],
)
def test_a_typed_diagnosis_becomes_its_code(typed: str, code: str) -> None:
    assert parse_search({"dx_any": typed}, NAMES).flt.diagnoses_any == [code]


def test_several_diagnoses_and_chosen_codes_are_kept_once_in_order() -> None:
    args = MultiDict([("dx_any", "164889003"), ("dx_any", "flutter; fibrill"), ("dx_none", "normal")])
    form = parse_search(args, NAMES)
    assert form.flt.diagnoses_any == ["164889003", "164890007"] and form.flt.diagnoses_none == ["SCP:NORM"]
    assert (
        parse_search(MultiDict([(k, v) for k, vs in form.query_args().items() for v in _listed(vs)]), NAMES)
        == form
    )


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("atrial", "'atrial' matches 2 diagnoses (atrial fibrillation, atrial flutter): pick one"),
        ("bundle branch", "matches 2 diagnoses"),
        ("xyzzy", "no diagnosis in the collection matches 'xyzzy'"),
    ],
)
def test_an_ambiguous_or_unknown_diagnosis_is_named(typed: str, reason: str) -> None:
    with pytest.raises(FormError) as info:
        parse_search({"dx_all": typed}, NAMES)
    assert info.value.field == "diagnosis all of" and reason in info.value.reason


def test_without_the_collection_names_typed_text_goes_to_the_service_unchanged() -> None:
    assert parse_search({"dx_any": " AF ; fibrill"}).flt.diagnoses_any == ["AF", "fibrill"]


def test_the_active_filter_is_described_in_words() -> None:
    form = parse_search(
        {"dx_any": "fibrill", "dx_none": "SCP:NORM", "sex": "F", "age_min": "40", "qrs_ms_min": "120"}, NAMES
    )
    phrases = describe_filter(form.flt, NAMES.__getitem__)
    assert phrases == [
        "diagnosis any of: atrial fibrillation (164889003)",
        "diagnosis none of: normal ECG (SCP:NORM)",
        "age: 40 to any",
        "sex: female",
        "QRS: 120 to any ms",
    ]
    assert describe_filter(SearchFilter(), NAMES.__getitem__) == []


def test_similar_by_is_one_view_or_the_default_and_survives_links() -> None:
    form = parse_search(MultiDict([("record_id", "ptbxl:17"), ("similar_by", "Rhythm")]))
    assert form.similar_by == "rhythm" and form.similar_by_label() == "the rhythm view"
    assert parse_search(MultiDict(form.query_args())).similar_by == "rhythm"
    default = parse_search(MultiDict([("record_id", "ptbxl:17")]))
    assert default.similar_by == "" and "similar_by" not in default.query_args()
    with pytest.raises(FormError, match="similar by"):
        parse_search(MultiDict([("record_id", "ptbxl:17"), ("similar_by", "shape")]))
