"""Readers for hospital formats, on the 16 real sample files in shared/data/hospital (read in place)."""

from __future__ import annotations

import base64
import csv
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg.bounds import MAX_FILE_BYTES as MAX_BYTES
from ecgsearch.ecg.readers import FORMATS, ReaderError, complete_leads, read_ecg, sniff
from ecgsearch.ecg.readers.types import age_from_dates, normalise_lead_name
from ecgsearch.ecg.signals import LEADS, MODEL_SAMPLES, prepare_array

FORMAT_BY_PREFIX = {
    "muse": "muse-xml",
    "philips": "philips-xml",
    "hl7aecg": "hl7-aecg",
    "dicom": "dicom",
    "scp": "scp-ecg",
    "edf": "edf",
}


@pytest.fixture(scope="session")
def hospital(data_dir: Path) -> Path:
    return data_dir / "hospital"


@pytest.fixture(scope="session")
def sources(hospital: Path) -> dict[str, dict[str, str]]:
    with open(hospital / "SOURCES.tsv", newline="") as f:
        return {row["filename"]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="session")
def read_all(hospital: Path, sources: dict[str, dict[str, str]]):
    return {name: read_ecg(hospital / name) for name in sources}


@pytest.fixture(scope="session")
def embedder():
    from ecgsearch.export.runtime import Embedder

    return Embedder(threads=1)


def test_every_sample_reads_with_the_rate_and_duration_sources_lists(read_all, sources):
    assert len(read_all) == 16
    for name, ecg in read_all.items():
        row = sources[name]
        assert ecg.format == FORMAT_BY_PREFIX[name.split("_")[0]], name
        assert ecg.sampling_rate_hz == float(row["rate_hz"]), name
        assert ecg.duration_s == pytest.approx(float(row["duration_s"]), abs=0.05), name
        full = complete_leads(ecg)
        assert full.shape == (12, ecg.signal.shape[1]) and full.dtype == np.float32, name
        assert np.isfinite(full).all(), name
        peak = np.abs(full).max(axis=1)
        live = peak[:6] if name.startswith("edf_") else peak  # the Contec EDF's V1-V6 are flat as recorded
        assert (live > 0.05).all() and (peak < 20).all(), (name, peak)  # mV, not uV or counts


def test_muse_stores_eight_leads_and_the_other_four_are_derived(read_all):
    ecg = read_all["muse_braveheart_example1.xml"]
    assert ecg.lead_names == ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    full = complete_leads(ecg)
    lead_i, lead_ii = full[0].astype(np.float64), full[1].astype(np.float64)
    np.testing.assert_allclose(full[LEADS.index("III")], lead_ii - lead_i, atol=1e-5)
    np.testing.assert_allclose(full[LEADS.index("aVR")], -(lead_i + lead_ii) / 2, atol=1e-5)


def test_every_sample_prepares_to_the_model_input(read_all):
    for name, ecg in read_all.items():
        x = prepare_array(ecg.signal, ecg.sampling_rate_hz, ecg.lead_names, record=name)
        assert x.shape == (12, MODEL_SAMPLES) and np.isfinite(x).all(), name


def test_format_is_chosen_by_content_not_by_name(hospital, sources, tmp_path):
    for name in sources:
        data = (hospital / name).read_bytes()
        assert sniff(data) == FORMAT_BY_PREFIX[name.split("_")[0]], name
    renamed = tmp_path / "upload.bin"
    renamed.write_bytes((hospital / "scp_ecgtoolkit_Example.scp").read_bytes())
    assert read_ecg(renamed).format == "scp-ecg"
    assert read_ecg((hospital / "philips_v1.04_ad4d3d80-d165.xml").read_bytes()).format == "philips-xml"
    assert set(FORMAT_BY_PREFIX.values()) <= set(FORMATS)


def test_a_format_hint_must_agree_with_the_content(hospital):
    data = (hospital / "muse_braveheart_example1.xml").read_bytes()
    assert read_ecg(data, format_hint="muse-xml").format == "muse-xml"
    with pytest.raises(ReaderError) as err:
        read_ecg(data, format_hint="dicom")
    assert err.value.field == "format_hint"
    with pytest.raises(ReaderError, match="format_hint"):
        read_ecg(data, format_hint="pdf")


# --- cross-format identity -------------------------------------------------------------------


def _cosine(embedder, a, b) -> float:
    x = np.stack([prepare_array(e.signal, e.sampling_rate_hz, e.lead_names) for e in (a, b)])
    v = embedder.embed(x)
    return float(v[0] @ v[1])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("hl7aecg_Example_aECG.xml", "scp_ecgtoolkit_Example.scp"),
        ("hl7aecg_Example_aECG.xml", "dicom_ecgtoolkit_Example.dcm"),
        ("scp_ecgtoolkit_Example.scp", "dicom_ecgtoolkit_Example.dcm"),
        ("muse_guangxi_sinus_rhythm.xml", "dicom_ecg2dcm_guangxi_sinus_rhythm.dcm"),
        ("hl7aecg_Example_aECG.xml", "hl7aecg_fda_subject1_0.xml"),
    ],
)
def test_one_recording_in_two_formats_reads_and_embeds_the_same(read_all, embedder, first, second):
    a, b = read_all[first], read_all[second]
    assert a.sampling_rate_hz == b.sampling_rate_hz
    stored = [i for i, name in enumerate(LEADS) if name in a.lead_names and name in b.lead_names]
    if set(a.lead_names) == set(b.lead_names):
        np.testing.assert_allclose(complete_leads(a), complete_leads(b), atol=1e-5)
    else:  # one file stores III, aVR, aVL, aVF rounded to whole units of 4.88 uV, the other derives them
        np.testing.assert_allclose(complete_leads(a)[stored], complete_leads(b)[stored], atol=1e-5)
        np.testing.assert_allclose(complete_leads(a), complete_leads(b), atol=0.00245)
    cosine = _cosine(embedder, a, b)
    print(f"cosine {first} vs {second}: {cosine:.8f}")
    assert cosine >= 0.999


def test_ecg_toolkit_dicom_keeps_real_zero_samples(read_all, hospital):
    import pydicom

    ds = pydicom.dcmread(hospital / "dicom_ecgtoolkit_Example.dcm")
    group = ds.WaveformSequence[0]
    assert group.WaveformPaddingValue == b"\x00\x00"
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(-1, group.NumberOfWaveformChannels).T
    ecg = read_all["dicom_ecgtoolkit_Example.dcm"]
    assert int((raw == 0).sum()) == 1269
    np.testing.assert_array_equal(ecg.signal == 0, raw == 0)  # every zero stays a zero, none a gap


# --- against reference libraries (imported here only: none of them is a serving dependency but sierraecg) ---


def _datakit(path: Path):
    """ecgdatakit's record in mV: the reference for MUSE, aECG and SCP-ECG, and what served them before."""
    from ecgdatakit.parsing import FileParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FileParser.parse(path).to_physical().convert_units("mV")


def test_muse_decoder_equals_ecgdatakit(hospital, read_all):
    for path in sorted(hospital.glob("muse_*.xml")):
        ref = _datakit(path)
        ours = read_all[path.name]
        assert [lead.label for lead in ref.leads] == list(ours.lead_names)
        np.testing.assert_allclose(ours.signal, np.stack([lead.samples for lead in ref.leads]), atol=1e-5)


@pytest.mark.parametrize(
    "name", ["scp_ecgtoolkit_Example.scp", "hl7aecg_Example_aECG.xml", "hl7aecg_fda_subject1_0.xml"]
)
def test_scp_and_aecg_equal_ecgdatakit(hospital, read_all, name):
    ref = _datakit(hospital / name)
    ours = read_all[name]
    assert [normalise_lead_name(lead.label) for lead in ref.leads] == list(ours.lead_names)
    assert {float(lead.sampling_rate) for lead in ref.leads} == {ours.sampling_rate_hz}
    expected = np.stack([lead.samples for lead in ref.leads]).astype(np.float32)
    np.testing.assert_array_equal(ours.signal, expected)  # bit for bit, not within a tolerance
    h = ours.header
    assert (h.sex, h.age_years, h.patient_key) == (ref.patient.sex, ref.patient.age, ref.patient.patient_id)
    assert (h.vendor, h.device_model) == (ref.recording.device.manufacturer, ref.recording.device.model)
    assert h.acquired_month == f"{ref.recording.date:%Y-%m}"
    m = ref.measurements
    assert (h.measurements.p_axis, h.measurements.r_axis, h.measurements.t_axis) == (
        m.p_axis,
        m.qrs_axis,
        m.t_axis,
    )


def test_philips_samples_equal_the_sierraecg_reference_decoder(hospital, read_all):
    import sierraecg

    for path in sorted(hospital.glob("philips_*.xml")):
        ref = sierraecg.read_file(str(path))
        ours = read_all[path.name]
        assert [normalise_lead_name(lead.label) for lead in ref.leads] == list(ours.lead_names)
        resolution_uv = 5.0  # <signalresolution>/<resolution> of all four files
        counts = np.stack([lead.samples for lead in ref.leads]).astype(np.float64)
        np.testing.assert_array_equal(np.round(ours.signal.astype(np.float64) * 1000 / resolution_uv), counts)
        np.testing.assert_allclose(ours.signal, counts * resolution_uv / 1000, atol=1e-6)


def test_philips_header_equals_ecgdatakit(hospital, read_all):
    """ecgdatakit read these fields before; the Philips reader now reads them itself, with the same
    results (QTc: ecgdatakit leaves 1.03's meanqtc out, both readers then take it)."""
    for path in sorted(hospital.glob("philips_*.xml")):
        ref, h = _datakit(path), read_all[path.name].header
        assert (h.sex, h.age_years, h.acquired_month) == (
            {"M": "M", "F": "F"}.get(ref.patient.sex),
            ref.patient.age,
            f"{ref.recording.date:%Y-%m}",
        ), path.name
        assert (h.vendor, h.device_model) == (
            ref.recording.device.manufacturer or None,
            ref.recording.device.model or None,
        ), path.name
        assert h.patient_key == ref.patient.patient_id
        m = ref.measurements
        assert h.measurements.ventricular_rate_bpm == m.heart_rate
        assert (h.measurements.pr_ms, h.measurements.qrs_ms, h.measurements.qt_ms) == (
            m.pr_interval,
            m.qrs_duration,
            m.qt_interval,
        )
        assert (h.measurements.p_axis, h.measurements.r_axis, h.measurements.t_axis) == (
            m.p_axis,
            m.qrs_axis,
            m.t_axis,
        )


def test_edf_reads_whole_and_equals_edfio(hospital, read_all):
    import edfio

    ours = read_all["edf_contec_0000050.edf"]
    ref = edfio.read_edf(hospital / "edf_contec_0000050.edf")
    assert ours.signal.shape == (12, 37855) and ours.sampling_rate_hz == 800.0
    assert list(ours.lead_names) == [s.label for s in ref.signals]
    assert ours.header.patient_key is None  # plain EDF: the patient field is free text, not an id
    assert ours.header.acquired_month == f"{ref.startdate:%Y-%m}" == "2020-11"
    np.testing.assert_allclose(ours.signal, np.stack([s.data for s in ref.signals]), atol=1e-5)


def test_philips_uncompressed_waveforms_read_like_xli(hospital, read_all):
    """The same samples stored uncompressed (Base64 int16, then plain text) read back identically."""
    import sierraecg

    name = "philips_v1.04_ad4d3d80-d165.xml"
    text = (hospital / name).read_bytes().decode("utf-16")
    counts = np.stack([lead.samples for lead in sierraecg.read_file(str(hospital / name)).leads])
    body = base64.b64encode(counts.astype("<i2").tobytes()).decode()
    start = text.index("<parsedwaveforms")
    end = text.index("</parsedwaveforms>")
    tag = text[start : text.index(">", start) + 1].replace('compression="XLI"', 'compression="Uncompressed"')
    for encoding, payload in (("Base64", body), ("Plain", " ".join(map(str, counts.ravel())))):
        doc = text[:start] + tag.replace('dataencoding="Base64"', f'dataencoding="{encoding}"')
        doc += payload + text[end:]
        ecg = read_ecg(doc.encode("utf-16"))
        np.testing.assert_array_equal(ecg.signal, read_all[name].signal)


def test_aecg_scale_and_origin_units_are_honoured(hospital, read_all):
    """2.5 uV per digit written as 0.0025 mV, and an origin given in another unit, read the same."""
    text = (hospital / "hl7aecg_Example_aECG.xml").read_text()
    as_mv = text.replace('<scale value="2.5" unit="uV"/>', '<scale value="0.0025" unit="mV"/>')
    ecg = read_ecg(as_mv.encode())
    np.testing.assert_allclose(ecg.signal, read_all["hl7aecg_Example_aECG.xml"].signal, atol=1e-6)
    shifted = text.replace('<origin value="0" unit="uV"/>', '<origin value="0.001" unit="mV"/>')
    ecg = read_ecg(shifted.encode())
    np.testing.assert_allclose(ecg.signal, read_all["hl7aecg_Example_aECG.xml"].signal + 0.001, atol=1e-6)


def test_philips_excursion_reads_as_recorded(read_all):
    ecg = read_all["philips_v1.04_ad4d3d80-d165.xml"]
    assert float(ecg.signal.min()) == pytest.approx(-17.225, abs=1e-3)
    x = prepare_array(ecg.signal, ecg.sampling_rate_hz, ecg.lead_names)
    assert x.shape == (12, MODEL_SAMPLES)


# --- header fields -------------------------------------------------------------------------------


def test_muse_measurements(read_all):
    m = read_all["muse_braveheart_example1.xml"].header.measurements
    assert (m.ventricular_rate_bpm, m.pr_ms, m.qrs_ms, m.qt_ms, m.qtc_ms) == (48, 138, 96, 452, 403)
    assert (m.p_axis, m.r_axis, m.t_axis) == (51, 20, 40)
    h = read_all["muse_musephi_ecg1.xml"].header
    assert (h.age_years, h.sex, h.acquired_month, h.device_model) == (60, "M", "2021-05", "MAC55")
    assert read_all["muse_braveheart_example4.xml"].header.measurements.r_axis == -66


def test_philips_header(read_all):
    h = read_all["philips_v1.04_ad4d3d80-d165.xml"].header
    assert (h.age_years, h.sex, h.acquired_month) == (32, "F", "2008-12")  # derived: DOB 1976-01-01
    assert (h.vendor, h.device_model) == ("Philips Medical Products", "PageWriter Touch")
    m = h.measurements
    assert (m.ventricular_rate_bpm, m.pr_ms, m.qrs_ms, m.qt_ms, m.qtc_ms) == (41, 144, 102, 564, 466)
    assert (m.p_axis, m.r_axis, m.t_axis) == (19, 85, 53)
    assert h.statement_codes == ("SB", "NPTA")  # the deleted QMBW quality statement is left out
    old = read_all["philips_v1.03_129DYPRG.xml"].header
    assert (old.age_years, old.sex, old.measurements.qtc_ms, old.statement_codes) == (50, "M", 393, ())


def test_dicom_and_aecg_headers(read_all):
    h = read_all["dicom_pydicom_waveform_ecg.dcm"].header
    assert (h.age_years, h.sex, h.acquired_month, h.device_model) == (42, "F", "2013-01", "el250")
    m = h.measurements
    assert (m.pr_ms, m.qrs_ms, m.qt_ms, m.qtc_ms, m.p_axis, m.r_axis, m.t_axis) == (
        161,
        75,
        368,
        370,
        74,
        52,
        57,
    )
    assert m.ventricular_rate_bpm == 61  # from its RR interval of 982 ms
    uid = "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1"
    assert read_all["dicom_pydicom_waveform_ecg.dcm"].native_id == uid
    aecg = read_all["hl7aecg_Example_aECG.xml"]
    assert aecg.native_id == "61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"
    assert (aecg.header.age_years, aecg.header.sex) == (46, "M")  # the file's reported age
    assert read_all["dicom_ecgtoolkit_Example.dcm"].header.age_years == 49  # derived from DOB


def test_one_recording_gives_the_same_measurements_in_three_formats(read_all):
    names = ("hl7aecg_Example_aECG.xml", "scp_ecgtoolkit_Example.scp", "dicom_ecgtoolkit_Example.dcm")
    for name in names:
        m = read_all[name].header.measurements
        got = (m.pr_ms, m.qrs_ms, m.qt_ms, m.qtc_ms, m.p_axis, m.r_axis, m.t_axis)
        assert got == (148, 120, 420, 443, 44, -61, 86), name
    muse = read_all["muse_guangxi_sinus_rhythm.xml"].header
    assert muse.measurements == read_all["dicom_ecg2dcm_guangxi_sinus_rhythm.dcm"].header.measurements


def test_age_is_derived_from_birth_date_and_capped(hospital):
    from datetime import date

    assert age_from_dates(date(1953, 5, 8), date(2002, 11, 22)) == 49
    assert age_from_dates(date(1953, 11, 23), date(2002, 11, 22)) == 48
    assert age_from_dates(date(1900, 1, 1), date(2024, 1, 1)) == 90
    text = (hospital / "muse_guangxi_sinus_rhythm.xml").read_bytes()
    without_age = re.sub(rb"<PatientAge>\d+</PatientAge>", b"", text)
    assert read_ecg(without_age).header.age_years == 90  # DOB 01-01-1900 at 2024: over 89


# --- hostile inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "muse_braveheart_example1.xml",
        "philips_v1.04_ad4d3d80-d165.xml",
        "hl7aecg_Example_aECG.xml",
        "dicom_ecgtoolkit_Example.dcm",
        "scp_ecgtoolkit_Example.scp",
        "edf_contec_0000050.edf",
    ],
)
def test_truncated_files_are_refused_without_naming_the_file(hospital, name):
    data = (hospital / name).read_bytes()
    with pytest.raises(ReaderError) as err:
        read_ecg(data[: len(data) // 2])
    assert name.split("_")[1] not in str(err.value)
    assert err.value.__cause__ is None  # library messages (file names, header text) are not chained


def test_wrong_encoding_is_refused(hospital):
    utf16 = (hospital / "philips_v1.04_ad4d3d80-d165.xml").read_bytes()
    as_utf8_but_declared_utf16 = utf16.decode("utf-16").encode("utf-8")
    with pytest.raises(ReaderError):
        read_ecg(as_utf8_but_declared_utf16)
    muse_as_utf32 = (
        (hospital / "muse_braveheart_example1.xml").read_bytes().decode("latin-1").encode("utf-32")
    )
    with pytest.raises(ReaderError, match="format"):
        read_ecg(muse_as_utf32)


@pytest.mark.parametrize(
    "doc",
    [
        b'<?xml version="1.0"?><!DOCTYPE RestingECG [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<RestingECG>&x;</RestingECG>",
        b'<?xml version="1.0"?><!DOCTYPE restingecgdata [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b"<restingecgdata>&c;</restingecgdata>",
        b'<?xml version="1.0"?><!DOCTYPE AnnotatedECG [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>'
        b'<AnnotatedECG xmlns="urn:hl7-org:v3">&x;</AnnotatedECG>',
    ],
)
def test_xml_entities_are_refused(doc):
    with pytest.raises(ReaderError) as err:
        read_ecg(doc)
    assert err.value.field == "xml" and "entit" in err.value.reason


def test_dicom_without_waveform_is_refused():
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"
    ds.PatientID = "P-123"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ReaderError) as err:
        read_ecg(buf.getvalue())
    assert err.value.field == "WaveformSequence" and "P-123" not in str(err.value)


def test_garbage_empty_and_oversized_input_is_refused(tmp_path):
    for data in (b"", b"\x00" * 1000, b"hello, this is not an ECG", b"<html><body/></html>"):
        with pytest.raises(ReaderError):
            read_ecg(data)
    big = tmp_path / "big.xml"
    with open(big, "wb") as f:
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(ReaderError) as err:
        read_ecg(big)
    assert err.value.field == "file" and "big" not in str(err.value)
    with pytest.raises(ReaderError, match="file"):
        read_ecg(tmp_path / "missing.dcm")


def test_too_many_channels_and_too_long_are_refused(hospital):
    text = (hospital / "muse_braveheart_example1.xml").read_bytes()
    start = text.index(b"<WaveformType>Rhythm")
    first = text.index(b"<LeadData>", start)
    end = text.index(b"</LeadData>", first) + len(b"</LeadData>")
    seventeen = text[:first] + text[first:end] * 10 + text[first:]  # 8 + 9 more rhythm leads
    with pytest.raises(ReaderError) as err:
        read_ecg(seventeen)
    assert err.value.field == "channels"
    too_long = text.replace(b"<LeadSampleCountTotal>5000<", b"<LeadSampleCountTotal>500000<", 1)
    with pytest.raises(ReaderError) as err:
        read_ecg(too_long)
    assert err.value.field == "duration"


def test_philips_bounds_are_checked_before_decoding(hospital):
    text = (hospital / "philips_v1.04_ad4d3d80-d165.xml").read_bytes().decode("utf-16")
    too_long = text.replace('durationperchannel="11000"', 'durationperchannel="36000000"', 1)
    with pytest.raises(ReaderError) as err:
        read_ecg(too_long.encode("utf-16"))
    assert err.value.field == "duration"
    too_many = text.replace('numberofleads="12"', 'numberofleads="64"', 1)
    with pytest.raises(ReaderError) as err:
        read_ecg(too_many.encode("utf-16"))
    assert err.value.field == "channels"
