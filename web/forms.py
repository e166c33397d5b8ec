"""The search form: query-string fields -> a validated filter and k, or one message naming the field.

Diagnosis fields take what a person types into the typeahead: a code, a Challenge abbreviation, an
option as the list shows it ("atrial fibrillation (164889003)"), or part of a name that names one
diagnosis of the collection; several are separated by ";". ``resolve_diagnosis`` turns each into a
stored code against the collection's own diagnoses, or names the entry it cannot place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ecgsearch.ecg import codes
from ecgsearch.ecg.schema import DEFAULT_BLEND, MEASUREMENT_LIMIT, SIMILAR_BY, InvalidQuery, SearchFilter
from ecgsearch.web.measures import SPECS, MeasureSpec

MAX_K = 50  # a results page draws every neighbour: keep it readable and fast
DEFAULT_K = 10
MAX_ID_CHARS = 128
MAX_DATASETS = 16
MAX_DX_ENTRIES = 32  # diagnoses per any/all/none field
DX_SEPARATOR = ";"
DX_FIELDS = (
    ("dx_any", "diagnoses_any", "any of"),
    ("dx_all", "diagnoses_all", "all of"),
    ("dx_none", "diagnoses_none", "none of"),
)
_OPTION = re.compile(r"\(([^()]+)\)\s*$")  # "name (CODE)": the code in the last parentheses


class FormError(ValueError):
    """A form field the viewer cannot use; the message names the field and says what is expected."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class SearchForm:
    """What a results page asks the service: one query (record id or held upload) and its filter."""

    record_id: str = ""
    upload: str = ""
    k: int = DEFAULT_K
    flt: SearchFilter = field(default_factory=SearchFilter)
    similar_by: str = ""  # a view or the default blend (ecg.schema.SIMILAR_BY); empty: the served vector

    def similar_by_label(self) -> str:
        """Which view produced the page, in words."""
        if self.similar_by == DEFAULT_BLEND:
            return "the default blend of the waveform, rhythm and voltage views"
        return f"the {self.similar_by} view" if self.similar_by else "the served embedding (default)"

    def query_args(self) -> dict[str, str | list[str]]:
        """The form as query-string arguments (for links that keep the filter)."""
        args: dict[str, str | list[str]] = {"k": str(self.k)}
        if self.similar_by:
            args["similar_by"] = self.similar_by
        if self.record_id:
            args["record_id"] = self.record_id
        if self.upload:
            args["upload"] = self.upload
        for name, key in (
            ("diagnoses_any", "dx_any"),
            ("diagnoses_all", "dx_all"),
            ("diagnoses_none", "dx_none"),
        ):
            if getattr(self.flt, name):
                args[key] = list(getattr(self.flt, name))
        if self.flt.age_min is not None:
            args["age_min"] = str(self.flt.age_min)
        if self.flt.age_max is not None:
            args["age_max"] = str(self.flt.age_max)
        if self.flt.sex:
            args["sex"] = self.flt.sex
        if self.flt.datasets:
            args["dataset"] = ", ".join(self.flt.datasets)
        for r in self.flt.measurements:
            for bound, value in (("min", r.min), ("max", r.max)):
                if value is not None:
                    args[measure_key(r.measurement, bound)] = f"{value:g}"
        return args


def measure_key(name: str, bound: str) -> str:
    """The query-string key of one bound: 'qrs_ms_min', 'qrs_ms_max'."""
    return f"{name}_{bound}"


class _Args:
    """Read access to a query string (werkzeug's MultiDict, or a plain dict in tests)."""

    def __init__(self, args: Mapping[str, object]) -> None:
        self.args = args

    def one(self, key: str) -> str:
        value = self.args.get(key, "")
        return str(value if value is not None else "").strip()

    def many(self, key: str) -> list[str]:
        getlist = getattr(self.args, "getlist", None)
        values: Sequence[object] = getlist(key) if getlist else _as_list(self.args.get(key))
        return [str(v).strip() for v in values if str(v).strip()]


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _int(value: str, name: str, lo: int, hi: int) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise FormError(name, f"{value[:20]!r} is not a whole number") from None
    if not lo <= number <= hi:
        raise FormError(name, f"{number} is outside {lo}-{hi}")
    return number


def _number(value: str, name: str) -> float | None:
    """A finite number within the service's bound on measurements, or None for an empty field."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise FormError(name, f"{value[:20]!r} is not a number") from None
    if not abs(number) <= MEASUREMENT_LIMIT:  # also refuses nan and inf
        raise FormError(name, f"{value[:20]} is outside -{MEASUREMENT_LIMIT:g} to {MEASUREMENT_LIMIT:g}")
    return number


def _measure_range(a: _Args, spec: MeasureSpec) -> dict[str, object] | None:
    """One measurement's from/to fields as the service's range (``MeasurementRange``), or None when both
    are empty; the checks here name the field as the form labels it."""
    label = f"{spec.label} ({spec.unit})"
    lo = _number(a.one(measure_key(spec.name, "min")), f"{label} from")
    hi = _number(a.one(measure_key(spec.name, "max")), f"{label} to")
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None and lo > hi:
        raise FormError(f"{label} range", f"from {lo:g} is above to {hi:g}")
    return {"measurement": spec.name, "min": lo, "max": hi}


def option_text(code: str, name: str) -> str:
    """How the typeahead lists a diagnosis (and what picking it puts in the field)."""
    return f"{name} ({code})"


def resolve_diagnosis(entry: str, names: Mapping[str, str], field_label: str) -> str:
    """One typed entry -> a stored code. ``names``: the collection's codes -> names (empty: the entry
    goes to the service unchanged, which resolves codes and abbreviations itself)."""
    text = entry.strip()
    if not names:
        return text
    folded = text.casefold()
    found = _OPTION.search(text)
    if found and found.group(1).strip() in names:
        return found.group(1).strip()
    for code, name in names.items():
        if folded in (code.casefold(), name.casefold(), option_text(code, name).casefold()):
            return code
    try:
        return codes.resolve(text)  # an abbreviation (AF, RBBB) or a code the collection does not hold
    except InvalidQuery:
        pass
    matches = [code for code, name in names.items() if folded in name.casefold() or folded in code.casefold()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise FormError(field_label, f"no diagnosis in the collection matches {text[:40]!r}")
    shown = ", ".join(sorted(names[c] for c in matches)[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise FormError(field_label, f"{text[:40]!r} matches {len(matches)} diagnoses ({shown}{more}): pick one")


def _diagnosis_entries(a: _Args, key: str) -> list[str]:
    """Every entry of a diagnosis field: repeated keys (chosen codes) and ';'-separated typed text."""
    return [part.strip() for value in a.many(key) for part in value.split(DX_SEPARATOR) if part.strip()]


def parse_search(args: Mapping[str, object], names: Mapping[str, str] | None = None) -> SearchForm:
    """Validate the form once; FormError names the first bad field. ``names`` (the collection's
    diagnosis codes -> names) lets a diagnosis field take part of a name."""
    a = _Args(args)
    diagnoses: dict[str, list[str]] = {}
    for key, attribute, label in DX_FIELDS:
        entries = _diagnosis_entries(a, key)
        if len(entries) > MAX_DX_ENTRIES:
            raise FormError(f"diagnosis {label}", f"at most {MAX_DX_ENTRIES} diagnoses")
        resolved = [resolve_diagnosis(e, names or {}, f"diagnosis {label}") for e in entries]
        diagnoses[attribute] = list(dict.fromkeys(resolved))
    record_id, upload = a.one("record_id"), a.one("upload")
    if len(record_id) > MAX_ID_CHARS:
        raise FormError("record id", f"longer than {MAX_ID_CHARS} characters")
    if len(upload) > MAX_ID_CHARS:
        raise FormError("upload", "not an upload this viewer holds")
    k = _int(a.one("k"), "k", 1, MAX_K) or DEFAULT_K
    similar_by = a.one("similar_by").strip().lower()
    if similar_by and similar_by not in SIMILAR_BY:
        raise FormError("similar by", f"expected {', '.join(SIMILAR_BY)} or the default")
    sex = a.one("sex").upper()
    if sex not in ("", "M", "F"):
        raise FormError("sex", "expected M, F or any")
    datasets = [d.strip() for d in a.one("dataset").split(",") if d.strip()]
    if len(datasets) > MAX_DATASETS or any(len(d) > MAX_ID_CHARS for d in datasets):
        raise FormError("dataset", f"at most {MAX_DATASETS} names of up to {MAX_ID_CHARS} characters")
    # raw form values for SearchFilter to validate (measurement ranges are still dicts here)
    values: dict[str, Any] = {
        **diagnoses,
        "age_min": _int(a.one("age_min"), "minimum age", 0, 130),
        "age_max": _int(a.one("age_max"), "maximum age", 0, 130),
        "sex": sex or None,
        "datasets": datasets,
        "measurements": [r for spec in SPECS if (r := _measure_range(a, spec)) is not None],
    }
    if (
        values["age_min"] is not None
        and values["age_max"] is not None
        and values["age_min"] > values["age_max"]
    ):
        raise FormError("age range", f"from {values['age_min']} is above to {values['age_max']}")
    try:
        flt = SearchFilter(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "diagnoses"
        raise FormError(where.replace("_", " "), str(first["msg"]).removeprefix("Value error, ")) from None
    return SearchForm(record_id=record_id, upload=upload, k=k, flt=flt, similar_by=similar_by)


def describe_filter(flt: SearchFilter, name_of: Callable[[str], str]) -> list[str]:
    """The active filter as short phrases for the results page ('sex: female', ...); empty: no filter."""
    out = []
    for _, attribute, label in DX_FIELDS:
        chosen = getattr(flt, attribute)
        if chosen:
            out.append(f"diagnosis {label}: " + ", ".join(f"{name_of(c)} ({c})" for c in chosen))
    if flt.age_min is not None or flt.age_max is not None:
        low = "" if flt.age_min is None else str(flt.age_min)
        high = "" if flt.age_max is None else str(flt.age_max)
        out.append(f"age: {low or 'any'} to {high or 'any'}")
    if flt.sex:
        out.append("sex: " + {"M": "male", "F": "female"}.get(flt.sex, flt.sex))
    if flt.datasets:
        out.append("dataset: " + ", ".join(flt.datasets))
    specs = {spec.name: spec for spec in SPECS}
    for r in flt.measurements:
        spec = specs.get(r.measurement)
        label, unit = (spec.label, spec.unit) if spec else (r.measurement, "")
        low = "any" if r.min is None else f"{r.min:g}"
        high = "any" if r.max is None else f"{r.max:g}"
        out.append(f"{label}: {low} to {high} {unit}".rstrip())
    return out
