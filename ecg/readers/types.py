"""What every reader returns, the one error type, and the checks of the bounds (``ecg.bounds``).

The header keeps only fields that may leave the file: derived age, sex, acquisition month, vendor and
model, the machine's measurements and vendor statement codes. ``patient_key`` is the one exception:
the source's raw patient id, held only so the caller can pseudonymise it (HMAC) before storing
anything; it is excluded from ``repr`` and from ``EcgHeader.public_fields()`` and must never be
logged or stored as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import date, datetime

import numpy as np

from ecgsearch.ecg.bounds import MAX_CHANNELS, MAX_RATE_HZ, MAX_SECONDS, MIN_RATE_HZ
from ecgsearch.ecg.schema import Measurements  # a reader's measurements are the payload's

AGE_CAP = 90  # ages over 89 are stored as 90 (HIPAA safe harbour)

_STATEMENT_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,31}$")


class ReaderError(ValueError):
    """A file that cannot be read as an ECG. Names the field; never the file name or its personal data."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class EcgHeader:
    """Non-personal header fields, plus ``patient_key`` for pseudonymisation only (hidden from repr)."""

    age_years: int | None = None
    sex: str | None = None
    acquired_month: str | None = None
    vendor: str | None = None
    device_model: str | None = None
    measurements: Measurements = field(default_factory=Measurements)
    statement_codes: tuple[str, ...] = ()
    patient_key: str | None = field(default=None, repr=False, compare=False)

    def public_fields(self) -> dict[str, object]:
        """Every field that may be stored, flat (measurements inlined); ``patient_key`` left out."""
        out: dict[str, object] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in {"patient_key", "measurements"}
        }
        out.update({f.name: getattr(self.measurements, f.name) for f in fields(self.measurements)})
        return out


@dataclass(frozen=True)
class ReadEcg:
    """One ECG as a file stores it: ``signal`` (n_leads, n_samples) float32 in mV, leads as in the file."""

    signal: np.ndarray = field(repr=False)
    lead_names: tuple[str, ...]
    sampling_rate_hz: float
    format: str
    native_id: str | None
    header: EcgHeader

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.sampling_rate_hz

    def __repr__(self) -> str:
        return (
            f"ReadEcg(format={self.format!r}, lead_names={self.lead_names!r}, "
            f"sampling_rate_hz={self.sampling_rate_hz!r}, shape={self.signal.shape!r}, "
            f"native_id={self.native_id!r}, header={self.header!r})"
        )


def make_read_ecg(
    signal: np.ndarray,
    lead_names: list[str] | tuple[str, ...],
    rate_hz: float,
    fmt: str,
    header: EcgHeader,
    native_id: str | None = None,
) -> ReadEcg:
    """Validate shape, bounds and values once, for every reader, and build the result."""
    try:
        rate = float(rate_hz)
    except (TypeError, ValueError):
        raise ReaderError("sampling_rate", "not a number") from None
    if not (MIN_RATE_HZ <= rate <= MAX_RATE_HZ):
        raise ReaderError("sampling_rate", f"{rate:g} Hz is outside {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz")
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ReaderError("signal", f"expected (leads, samples), got shape {x.shape}")
    check_channels(x.shape[0])
    check_duration(x.shape[1], rate)
    names = tuple(normalise_lead_name(n) for n in lead_names)
    if len(names) != x.shape[0]:
        raise ReaderError("lead_names", f"{len(names)} names for {x.shape[0]} leads")
    if len(set(names)) != len(names):
        raise ReaderError("lead_names", f"duplicate lead names {names}")
    if not np.isfinite(x).all():
        raise ReaderError("signal", f"{int((~np.isfinite(x)).sum())} NaN or infinite samples")
    x.setflags(write=False)
    return ReadEcg(x, names, rate, fmt, native_id, header)


def check_channels(n: int) -> None:
    if not 1 <= n <= MAX_CHANNELS:
        raise ReaderError("channels", f"{n} channels; 1-{MAX_CHANNELS} supported")


def check_duration(n_samples: int, rate_hz: float) -> None:
    if rate_hz > 0 and n_samples / rate_hz > MAX_SECONDS:
        raise ReaderError("duration", f"{n_samples / rate_hz:.0f} s exceeds {MAX_SECONDS:.0f} s")


_LEAD_SPELLING = {n.upper(): n for n in ("I", "II", "III", "aVR", "aVL", "aVF")} | {
    f"V{i}": f"V{i}" for i in range(1, 7)
}


def normalise_lead_name(name: str) -> str:
    """'AVR', 'Lead aVR', 'MDC_ECG_LEAD_AVR', 'Lead I (Einthoven)', 'aVR, augmented voltage, right'
    -> 'aVR' or 'I'; other names are kept as written."""
    s = re.sub(r"\(.*?\)", "", str(name)).split(",")[0].strip()
    s = re.sub(r"^(MDC_ECG_LEAD_|LEAD[ _-]?)", "", s, flags=re.IGNORECASE).strip()
    return _LEAD_SPELLING.get(s.upper(), s)


def cap_age(age: float | None) -> int | None:
    """Whole years, None when implausible, ages over 89 as 90."""
    if age is None or not (0 <= age < 150):
        return None
    return min(int(age), AGE_CAP)


def age_from_dates(birth: date | None, at: date | None) -> int | None:
    """Completed years between a birth date and the acquisition date."""
    if birth is None or at is None or birth > at:
        return None
    years = at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
    return cap_age(years)


def year_month(at: date | datetime | None) -> str | None:
    return None if at is None else f"{at.year:04d}-{at.month:02d}"


def sex_code(value: object) -> str | None:
    """'M'/'F' from the spellings files use (Male, MALE, M, F, Female, 1/2 as in HL7); else None."""
    s = str(value or "").strip().upper()
    if s in {"M", "MALE"}:
        return "M"
    if s in {"F", "FEMALE"}:
        return "F"
    return None


def statement_codes(values: list[str]) -> tuple[str, ...]:
    """Keep vendor statement codes (short tokens) in order, dropping anything that reads like text."""
    out: list[str] = []
    for v in values:
        v = (v or "").strip()
        if _STATEMENT_CODE.match(v) and v not in out:
            out.append(v)
    return tuple(out)


def count(value: object) -> int | None:
    """A non-negative header count (samples, channels, milliseconds), None when absent; unlike
    ``number`` it keeps large values, so that bounds see them."""
    s = str(value or "").strip()
    if not s:
        return None
    if not s.isdigit() or len(s) > 15:
        raise ReaderError("header", "a count field is not a whole number")
    return int(s)


def real(value: object) -> float | None:
    """A finite float (rates, sensitivities), None when absent or not a number."""
    try:
        x = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def number(value: object) -> float | None:
    """A measurement as float, or None for blanks, 'Failed', sentinels and non-finite values."""
    x = real(value)
    return None if x is None or abs(x) >= 10_000 else x
