"""The machine measurements the service stores and filters on, named and unit-labelled for clinicians."""

from __future__ import annotations

from dataclasses import dataclass

from ecgsearch.ecg.schema import PAYLOAD_FIELDS


@dataclass(frozen=True)
class MeasureSpec:
    """One payload measurement: its field name, what a clinician calls it, and its unit."""

    name: str
    label: str
    unit: str

    def text(self, value: float) -> str:
        """'QRS 96 ms', 'R axis -21°': machines report whole numbers, so no trailing '.0'."""
        number = f"{value:.0f}" if float(value).is_integer() else f"{value:g}"
        gap = "" if self.unit == "°" else " "
        return f"{self.label} {number}{gap}{self.unit}"


# In the order a printed ECG report lists them: the payload's measurements (ecg.schema.PAYLOAD_FIELDS).
SPECS: tuple[MeasureSpec, ...] = tuple(
    MeasureSpec(f.name, f.measure.label, f.measure.unit) for f in PAYLOAD_FIELDS if f.measure is not None
)
BY_NAME = {spec.name: spec for spec in SPECS}


@dataclass(frozen=True)
class Shown:
    """One measurement as a page shows it (``name`` lets tests and styles find it)."""

    name: str
    text: str
    value: float


def shown(payload: object) -> list[Shown]:
    """The measurements an ECG carries (a stored payload, or an upload's ``readers.Measurements``: the
    same field names), labelled with units; absent ones are left out, not guessed."""
    present = ((spec, getattr(payload, spec.name, None)) for spec in SPECS)
    return [Shown(spec.name, spec.text(value), value) for spec, value in present if value is not None]


def device(payload: object) -> str:
    """The acquiring machine's maker and model (never a serial number), or '' when unknown."""
    parts = (getattr(payload, "vendor", None), getattr(payload, "device_model", None))
    return " ".join(str(part) for part in parts if part)
