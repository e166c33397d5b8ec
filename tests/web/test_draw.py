"""The ECG drawing at paper scale: 1 mm / 5 mm grid, 25 mm/s, 10 mm/mV, the 3 x 4 layout, alignment."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import signals
from ecgsearch.search.api import DiagnosisConcentration
from ecgsearch.web import charts, ecgdraw, peaks

NS = {"s": "http://www.w3.org/2000/svg"}
UNITS_PER_MM = 10  # one SVG user unit is 0.1 mm


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def _points(polyline: ET.Element) -> np.ndarray:
    return np.array([[float(v) for v in p.split(",")] for p in polyline.get("points", "").split()])


def _lead(root: ET.Element, lead: str, rhythm: bool = False) -> ET.Element:
    for g in root.iter(f"{{{NS['s']}}}g"):
        classes = g.get("class", "").split()
        if g.get("data-lead") == lead and ("rhythm" in classes) == rhythm:
            return g
    raise AssertionError(f"no lead {lead}")


def test_svg_is_in_millimetres_with_a_1_mm_and_5_mm_grid() -> None:
    root = _parse(ecgdraw.twelve_lead(np.zeros((12, 1000)), 100.0))
    width_mm = float(root.get("width", "").removesuffix("mm"))
    view_width = float(root.get("viewBox", "").split()[2])
    assert view_width / width_mm == UNITS_PER_MM
    minor = root.find(".//s:pattern[@class='grid-minor']", NS)
    major = root.find(".//s:pattern[@class='grid-major']", NS)
    assert minor is not None and major is not None
    assert (
        float(minor.get("width", "")) / UNITS_PER_MM == 1.0 == float(minor.get("height", "")) / UNITS_PER_MM
    )
    assert (
        float(major.get("width", "")) / UNITS_PER_MM == 5.0 == float(major.get("height", "")) / UNITS_PER_MM
    )
    # The paper starts on a major line and both sizes are whole numbers of 5 mm squares.
    assert width_mm % 5 == 0 and float(root.get("viewBox", "").split()[3]) % 10 == 0


@pytest.mark.parametrize("fs", [100.0, 500.0])
def test_one_second_is_25_mm_and_one_millivolt_is_10_mm(fs: float) -> None:
    t = np.arange(int(10 * fs)) / fs
    signal = np.zeros((12, len(t)))
    signal[1] = t  # lead II rises 1 mV per second
    root = _parse(ecgdraw.twelve_lead(signal, fs, ecgdraw.MV))
    xy = _points(_lead(root, "II", rhythm=True).find("s:polyline", NS)) / UNITS_PER_MM
    assert len(xy) == len(t)
    mm_per_s = np.polyfit(t, xy[:, 0], 1)[0]
    mm_per_mv = -np.polyfit(t, xy[:, 1], 1)[0]  # SVG y grows downwards: up on paper is up in mV
    assert mm_per_s == pytest.approx(25.0, abs=0.01)
    assert mm_per_mv == pytest.approx(10.0, abs=0.01)
    assert xy[-1, 0] - xy[0, 0] == pytest.approx(25.0 * (len(t) - 1) / fs, abs=0.1)


def test_calibration_pulse_is_10_mm_by_5_mm_and_the_scale_is_written() -> None:
    for scale, words in ((ecgdraw.MV, "10 mm/mV"), (ecgdraw.Scale(2.5, "units", 4.0), "10 mm = 4 units")):
        root = _parse(ecgdraw.twelve_lead(np.zeros((12, 1000)), 100.0, scale))
        pulse = _points(root.find(".//s:polyline[@class='pulse']", NS)) / UNITS_PER_MM
        assert np.ptp(pulse[:, 1]) == pytest.approx(10.0)
        assert pulse[4, 0] - pulse[2, 0] == pytest.approx(5.0)  # 0.2 s at 25 mm/s
        assert words in "".join(root.itertext())


def test_three_by_four_layout_with_a_lead_ii_rhythm_strip() -> None:
    fs = 100.0
    signal = np.tile(np.arange(1000, dtype=float), (12, 1))
    root = _parse(ecgdraw.twelve_lead(signal, fs))
    columns = [("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6")]
    for col, leads in enumerate(columns):
        for lead in leads:
            g = _lead(root, lead)
            assert float(g.get("data-t0", "")) == 2.5 * col
            xy = _points(g.find("s:polyline", NS)) / UNITS_PER_MM
            assert xy[0, 0] == pytest.approx(ecgdraw.PULSE_MM + 62.5 * col, abs=0.1)
            assert 62.5 <= xy[-1, 0] - xy[0, 0] + 0.25 <= 62.5 + 0.5  # 2.5 s (the next sample joins)
    rows = {lead: _points(_lead(root, lead).find("s:polyline", NS))[0, 1] for lead in ("I", "II", "III")}
    assert rows["II"] - rows["I"] == rows["III"] - rows["II"] == ecgdraw.ROW_MM * UNITS_PER_MM
    strip = _points(_lead(root, "II", rhythm=True).find("s:polyline", NS)) / UNITS_PER_MM
    assert strip[-1, 0] - strip[0, 0] == pytest.approx(250 - 0.25, abs=0.1)


def test_thumbnail_is_compact() -> None:
    root = _parse(ecgdraw.twelve_lead(np.zeros((12, 1000)), 100.0, compact=True))
    assert root.find(".//s:pattern[@class='grid-minor']", NS) is None
    assert root.find(".//s:polyline[@class='pulse']", NS) is None
    assert len(root.findall(".//s:g[@class='lead']", NS)) == 12


def test_bad_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="expected \\(12, samples\\)"):
        ecgdraw.twelve_lead(np.zeros((8, 1000)), 100.0)
    with pytest.raises(ValueError, match="fs"):
        ecgdraw.twelve_lead(np.zeros((12, 1000)), 0.0)


def _spikes(onsets: list[int], n: int = 1000, invert: bool = False) -> np.ndarray:
    """Lead II with narrow R spikes at ``onsets`` and lower, broader T waves 25 samples after each."""
    t = np.arange(n)
    x = sum(
        np.exp(-0.5 * ((t - o) / 1.5) ** 2) + 0.3 * np.exp(-0.5 * ((t - o - 25) / 6) ** 2) for o in onsets
    )
    return -x if invert else x


def test_first_r_peak_on_synthetic_and_real_leads(ptbxl_dir) -> None:
    assert peaks.first_r_peak(_spikes([130, 210, 290]), 100.0) == 130
    assert peaks.first_r_peak(_spikes([57, 140]), 100.0) == 57
    assert peaks.first_r_peak(_spikes([90, 170], invert=True), 100.0) == 90
    assert peaks.first_r_peak(np.zeros(1000), 100.0) is None
    from ecgsearch.ecg import signals

    lead_ii = signals.load(ptbxl_dir / "records100" / "00000" / "00001_lr")[1]
    first = peaks.first_r_peak(lead_ii, 100.0)
    assert first is not None and lead_ii[first] == lead_ii[max(0, first - 10) : first + 10].max()


def test_alignment_shift_lines_up_the_first_r_peaks() -> None:
    query = np.zeros((12, 1000))
    other = np.zeros((12, 1000))
    query[1] = _spikes([150, 230, 310])
    other[1] = _spikes([133, 213, 293])
    assert peaks.alignment_shift(query, other, 100.0) == 17
    root = _parse(ecgdraw.overlay(query, other, 100.0, shift=17))
    moved = root.find(".//s:g[@data-lead='II']/s:polyline[@data-role='neighbour']", NS)
    xy = _points(moved) / UNITS_PER_MM
    assert xy[0, 0] == pytest.approx(ecgdraw.PULSE_MM + 17 / 100 * 25, abs=0.1)
    peak_x = xy[np.argmin(xy[:, 1]), 0]  # the highest point on paper
    q = _points(root.find(".//s:g[@data-lead='II']/s:polyline[@data-role='query']", NS)) / UNITS_PER_MM
    assert peak_x == pytest.approx(q[np.argmin(q[:, 1]), 0], abs=0.1)


def test_enrichment_chart_bars_are_proportional() -> None:
    rows = [
        DiagnosisConcentration(
            code="164889003",
            description="atrial fibrillation",
            count=5,
            fraction=0.5,
            base_rate=0.1,
            enrichment=5.0,
        ),
        DiagnosisConcentration(
            code="SCP:NORM", description="normal ECG", count=2, fraction=0.2, base_rate=0.4, enrichment=0.5
        ),
    ]
    root = _parse(charts.enrichment_chart(rows, 10))
    groups = root.findall(".//s:g[@class='diagnosis']", NS)
    assert [g.get("data-code") for g in groups] == ["164889003", "SCP:NORM"]
    widths = [
        (
            float(g.find("s:rect[@class='neighbours']", NS).get("width")),
            float(g.find("s:rect[@class='base']", NS).get("width")),
        )
        for g in groups
    ]
    assert widths[0] == (0.5 * charts.BAR_PX, 0.1 * charts.BAR_PX)
    assert widths[1] == (0.2 * charts.BAR_PX, 0.4 * charts.BAR_PX)
    text = "".join(root.itertext())
    assert "×5.0" in text and "×0.5" in text and "164889003: atrial fibrillation" in text


def test_median_beats_line_up_an_irregular_rhythm_beat_by_beat() -> None:
    """AF-like: the same beat at irregular intervals (RR 0.41-0.97 s) in the query and, at other irregular
    intervals, in the neighbour. The first-R overlay lines up one beat only; the median beats coincide."""
    rng = np.random.default_rng(7)

    def irregular(first: int) -> tuple[np.ndarray, list[int]]:
        onsets = [first]
        while onsets[-1] + 100 < 1000:
            onsets.append(onsets[-1] + int(rng.integers(41, 98)))
        signal = np.zeros((12, 1000))
        signal[:] = _spikes([o for o in onsets if o < 1000])
        return signal, [o for o in onsets if o < 1000]

    query, q_onsets = irregular(40)
    other, o_onsets = irregular(71)
    before = int(round(peaks.BEAT_BEFORE_S * 100))
    q_beat, q_n = peaks.median_beat(query, 100.0)
    o_beat, o_n = peaks.median_beat(other, 100.0)
    whole = [o for o in q_onsets if o >= before and o + int(round(peaks.BEAT_AFTER_S * 100)) <= 1000]
    assert q_n == len(whole) >= 8 and o_n >= 8
    assert q_beat.shape == (12, before + 45) and int(np.argmax(q_beat[1])) == before
    # Neighbouring beats intrude into a window at short RR; the median keeps the beat itself.
    np.testing.assert_allclose(
        q_beat[:, before - 10 : before + 20], o_beat[:, before - 10 : before + 20], atol=0.02
    )
    svg = ecgdraw.median_beats(q_beat, o_beat, 100.0, before)
    root = _parse(svg)
    assert len(root.findall(".//s:g[@class='lead']", NS)) == 12
    for lead in ecgdraw.LEADS:
        g = root.find(f".//s:g[@data-lead='{lead}']", NS)
        q = _points(g.find("s:polyline[@data-role='query']", NS)) / UNITS_PER_MM
        n = _points(g.find("s:polyline[@data-role='neighbour']", NS)) / UNITS_PER_MM
        assert q[np.argmin(q[:, 1]), 0] == pytest.approx(n[np.argmin(n[:, 1]), 0], abs=0.1)
    assert len(root.findall(".//s:line[@class='r-mark']", NS)) == 12
    assert peaks.median_beat(np.zeros((12, 1000)), 100.0) is None


def test_median_beat_of_a_real_af_record_is_centred_on_r(ptbxl_dir) -> None:
    """PTB-XL ecg_id 17 (AFIB), as the service prepares it, and the same ECG 230 ms later: one median beat."""
    from ecgsearch.ecg import signals

    x = signals.load(ptbxl_dir / "records100" / "00000" / "00017_lr")
    beat, n = peaks.median_beat(x, 100.0)
    before = int(round(peaks.BEAT_BEFORE_S * 100))
    assert n >= 8
    lead_ii = np.abs(beat[1] - np.median(beat[1]))
    assert abs(int(np.argmax(lead_ii)) - before) <= 1
    later, m = peaks.median_beat(x[:, 23:], 100.0)
    assert m >= n - 1  # at most the first beat is lost
    # The same beats less one at the edge: the medians agree, up to that beat's vote on steep QRS slopes.
    difference = later[:, before - 5 : before + 10] - beat[:, before - 5 : before + 10]
    assert np.sqrt(np.mean(difference**2)) < 0.03 and np.abs(difference).max() < 0.25


def test_thumbnail_labels_are_readable_and_large_complexes_stay_in_their_row() -> None:
    """A thumbnail is shown about a third of paper scale: labels 9 mm high (3 mm shown), and a 6 mV
    complex (60 mm, beyond its 35 mm row) is clipped to its own row."""
    x = np.zeros((12, 1000))
    x[7, 600:610] = 6.0  # V2, shown from 5 to 7.5 s
    root = _parse(ecgdraw.twelve_lead(x, 100.0, compact=True, uid="t"))
    labels = root.findall(".//s:text[@class='thumb-label']", NS)
    assert [t.text for t in labels] == [ecgdraw.LEADS[c * 3 + r] for r in range(3) for c in range(4)]
    assert all(float(t.get("font-size")) == ecgdraw.THUMB_LABEL_MM * UNITS_PER_MM for t in labels)
    clips = {c.get("id"): c.find("s:rect", NS) for c in root.findall(".//s:clipPath", NS)}
    for g in root.findall(".//s:g[@class='lead']", NS):
        row = ecgdraw.LEADS.index(g.get("data-lead")) % 3
        rect = clips[g.get("clip-path").removeprefix("url(#").removesuffix(")")]
        top = (ecgdraw.MAJOR_MM + ecgdraw.ROW_MM * row) * UNITS_PER_MM
        assert (float(rect.get("y")), float(rect.get("height"))) == (top, ecgdraw.ROW_MM * UNITS_PER_MM)
    v2 = _points(root.find(".//s:g[@data-lead='V2']/s:polyline", NS))
    assert v2[:, 1].min() < float(clips["t-row1"].get("y"))  # the trace runs out of its row ...
    assert root.find(".//s:g[@data-lead='V2']", NS).get("clip-path") == "url(#t-row1)"  # ... and is clipped
    full = _parse(ecgdraw.twelve_lead(x, 100.0, uid="f"))
    assert full.find(".//s:clipPath", NS) is None  # full size: as on paper, complexes may overlap


def test_a_500_hz_thumbnail_is_thinned_but_keeps_every_peak_and_the_full_drawing_every_sample(
    ptbxl_dir: Path,
) -> None:
    """A real 500 Hz PTB-XL recording drawn as a thumbnail keeps at most two points per 10 ms bucket (no
    heavier than at 100 Hz) yet reaches each lead segment's highest and lowest sample; full size draws all."""
    x = signals.recorded(signals.read_wfdb(ptbxl_dir / "records500" / "00000" / "00009_hr"))
    assert x.shape == (12, 5000)
    x[1, 1234] = 4.0  # a one-sample pacing spike in lead II, 2.47 s: column 0 shows it
    thumb = _parse(ecgdraw.twelve_lead(x, 500.0, compact=True, uid="t"))
    full = _parse(ecgdraw.twelve_lead(x, 500.0, uid="f"))
    for lead in ecgdraw.LEADS:
        g = _lead(thumb, lead)
        drawn = _points(g.find("s:polyline", NS))
        t0 = float(g.get("data-t0"))
        segment = x[ecgdraw.LEADS.index(lead), round(t0 * 500) : round(t0 * 500) + 1251]
        assert len(drawn) <= 2 * 250 + 2  # 2.5 s: 250 buckets of 5 samples, two points each
        heights = (35 * (ecgdraw.LEADS.index(lead) % 3) + 5 + 17.5) * UNITS_PER_MM - drawn[:, 1]
        assert heights.max() == pytest.approx(round(segment.max() * 100), abs=1)  # 0.1 mm units
        assert heights.min() == pytest.approx(round(segment.min() * 100), abs=1)
        assert np.all(np.diff(drawn[:, 0]) >= 0)  # in time order
        assert len(_points(_lead(full, lead).find("s:polyline", NS))) in (1250, 1251)
    spike = _points(_lead(thumb, "II").find("s:polyline", NS))
    assert (35 + 5 + 17.5) * UNITS_PER_MM - spike[:, 1].min() == 400  # 4 mV = 40 mm
