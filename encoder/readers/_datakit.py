"""Run one ecgdatakit parser on bytes and keep only what leaves the file: samples in mV and safe fields.

ecgdatakit parses from a path, so the bytes go to a private temporary file (random name) that is
removed at once. Its exceptions can carry the file name or header text, so they are replaced by a
ReaderError that names only the format.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from ecgsearch.encoder.readers.types import (
    EcgHeader,
    Measurements,
    ReaderError,
    age_from_dates,
    cap_age,
    check_channels,
    check_duration,
    number,
    sex_code,
    year_month,
)


def parse(data: bytes, parser_name: str, fmt: str, suffix: str):  # -> ecgdatakit ECGRecord
    """Parse ``data`` with ``ecgdatakit.parsing.parsers.<module>.<Class>`` given as 'module:Class'."""
    import importlib

    module, cls = parser_name.split(":")
    parser = getattr(importlib.import_module(f"ecgdatakit.parsing.parsers.{module}"), cls)
    with tempfile.TemporaryDirectory(prefix="ecgsearch-read-") as tmp:
        path = Path(tmp) / f"ecg{suffix}"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = parser().parse(path)
                record = record.to_physical().convert_units("mV")
        except ReaderError:
            raise
        except Exception as exc:  # the library raises many types for corrupt input
            raise ReaderError(fmt, f"cannot decode ({type(exc).__name__})") from None
    return record


def signal(record) -> tuple[np.ndarray, list[str], float]:
    """(leads, samples) in mV, lead labels and the common sampling rate of an ECGRecord."""
    leads = list(record.leads)
    check_channels(len(leads))
    rates = {float(lead.sampling_rate) for lead in leads}
    if len(rates) != 1:
        raise ReaderError("sampling_rate", f"leads sampled at different rates {sorted(rates)}")
    rate = rates.pop()
    lengths = {len(lead.samples) for lead in leads}
    check_duration(max(lengths), rate)
    if len(lengths) != 1:
        raise ReaderError("signal", "leads differ in length")
    units = {str(lead.units) for lead in leads}
    if units != {"mV"}:
        raise ReaderError("units", f"amplitudes not convertible to mV ({sorted(units)})")
    x = np.stack([np.asarray(lead.samples, dtype=np.float64) for lead in leads])
    return x, [str(lead.label) for lead in leads], rate


def header(record, statement_codes: tuple[str, ...] = ()) -> EcgHeader:
    """Map ecgdatakit's parsed header to the non-personal fields (plus patient_key)."""
    acquired = record.recording.date
    birth = record.patient.birth_date
    age = cap_age(record.patient.age) if record.patient.age is not None else None
    if age is None and birth is not None and acquired is not None:
        age = age_from_dates(birth.date(), acquired.date())
    m = record.measurements
    device = record.recording.device
    qtc = m.qtc_bazett if m.qtc_bazett is not None else m.qtc_fridericia
    return EcgHeader(
        age_years=age,
        sex=sex_code(record.patient.sex),
        acquired_month=year_month(acquired),
        vendor=(device.manufacturer or "").strip() or None,
        device_model=(device.model or "").strip() or None,
        measurements=Measurements(
            ventricular_rate_bpm=number(m.heart_rate),
            pr_ms=number(m.pr_interval),
            qrs_ms=number(m.qrs_duration),
            qt_ms=number(m.qt_interval),
            qtc_ms=number(qtc),
            p_axis=number(m.p_axis),
            r_axis=number(m.qrs_axis),
            t_axis=number(m.t_axis),
        ),
        statement_codes=statement_codes,
        patient_key=(record.patient.patient_id or "").strip() or None,
    )
