"""ECGs as server-side SVG on the standard paper grid: 25 mm/s, 1 mm and 5 mm squares.

Hand-built SVG (numpy + string joins) rather than matplotlib: a 12-lead page is one polyline per lead
on a grid drawn by two ``<pattern>``s, orders of magnitude faster than building the same 3 x 4 grid
with matplotlib's SVG backend, which matters because a results page draws eleven ECGs.

Coordinates: one SVG user unit is 0.1 mm (``UNIT_MM``); the ``width``/``height`` attributes are in mm,
so the drawing prints at true paper scale. Time runs at ``PAPER_SPEED_MM_S`` and amplitude at
``Scale.mm_per_unit``: 10 mm/mV, since files and prepared model inputs are both in mV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
PAPER_SPEED_MM_S = 25.0
UNIT_MM = 0.1  # one SVG user unit
MINOR_MM = 1.0
MAJOR_MM = 5.0
SECONDS = 10.0
COLUMNS = 4  # 3 x 4 layout: each column shows its own 2.5 s
ROWS = 3
ROW_MM = 35.0  # baseline to baseline
PULSE_MM = 10.0  # left margin holding the calibration pulse
PULSE_WIDTH_S = 0.2
RHYTHM_LEAD = "II"
THUMB_FS = 100.0  # thumbnails thin recordings above this rate to each bucket's extremes (peaks survive)
THUMB_LABEL_MM = 9.0  # thumbnails are shown ~3x smaller than paper scale: labels still readable
# Bold, with a white halo (drawn under the fill) so a label stays legible where a trace crosses it.
THUMB_LABEL_STYLE = (
    'class="thumb-label" font-weight="bold" fill="#1f3550" '
    'stroke="#fff" stroke-width="12" paint-order="stroke"'
)
GRID_MINOR = "#f4c7c3"
GRID_MAJOR = "#e8867d"
TRACE = "#111"
OVERLAY = "#1f5fbf"


@dataclass(frozen=True)
class Scale:
    """Amplitude scale: ``mm_per_unit`` millimetres per unit of the signal, and the unit's name."""

    mm_per_unit: float
    unit: str
    pulse_units: float  # height of the calibration pulse, in signal units

    def caption(self) -> str:
        speed = f"{PAPER_SPEED_MM_S:g} mm/s"
        if self.unit == "mV":
            return f"{speed} · {self.mm_per_unit:g} mm/mV"
        mm = self.pulse_units * self.mm_per_unit
        return f"{speed} · {mm:g} mm = {self.pulse_units:g} {self.unit}"


MV = Scale(10.0, "mV", 1.0)


def _u(mm: float) -> int:
    """Millimetres -> user units (0.1 mm)."""
    return round(mm / UNIT_MM)


def _points(x_mm: np.ndarray, y_mm: np.ndarray) -> str:
    xs = np.rint(x_mm / UNIT_MM).astype(np.int64).tolist()
    ys = np.rint(y_mm / UNIT_MM).astype(np.int64).tolist()
    return " ".join(f"{x},{y}" for x, y in zip(xs, ys, strict=True))


def thinned(values: np.ndarray, fs: float, max_fs: float) -> tuple[np.ndarray, np.ndarray]:
    """(sample positions, values) to draw: every sample up to ``max_fs``; above it, each bucket of
    ceil(fs / max_fs) samples keeps only its lowest and highest, in time order, so a thumbnail of a 500 Hz
    recording is as light as one at 100 Hz and still reaches every R peak and pacing spike."""
    v = np.asarray(values, dtype=np.float64)
    step = int(np.ceil(fs / max_fs - 1e-9))
    if step <= 1 or len(v) < 2 * step:
        return np.arange(len(v)), v
    whole = len(v) // step * step
    buckets = v[:whole].reshape(-1, step)
    starts = np.arange(buckets.shape[0])[:, None] * step
    lo, hi = buckets.argmin(axis=1), buckets.argmax(axis=1)
    pairs = np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=1) + starts  # non-decreasing
    at = pairs.ravel()
    at = np.concatenate([at[np.r_[True, np.diff(at) > 0]], np.arange(whole, len(v))])  # a flat bucket: once
    return at, v[at]


def _trace(
    values: np.ndarray,
    fs: float,
    x0_mm: float,
    baseline_mm: float,
    scale: Scale,
    max_fs: float | None = None,
    **attrs: str,
) -> str:
    """One polyline: sample i at x0 + i/fs * 25 mm, value v at baseline - v * mm_per_unit (up is up);
    with ``max_fs``, the samples ``thinned`` keeps."""
    at, v = thinned(values, fs, max_fs) if max_fs else (np.arange(len(values)), np.asarray(values, float))
    x = x0_mm + at / fs * PAPER_SPEED_MM_S
    y = baseline_mm - v * scale.mm_per_unit
    extra = "".join(f' {k.replace("_", "-")}="{escape(str(val))}"' for k, val in attrs.items())
    return f'<polyline class="trace" points="{_points(x, y)}"{extra}/>'


def _grid(uid: str, width_mm: float, height_mm: float, minor: bool) -> str:
    """The paper: 1 mm minor squares inside 5 mm major squares, as two patterns over one rect."""
    m, big = _u(MINOR_MM), _u(MAJOR_MM)
    defs = []
    if minor:
        defs.append(
            f'<pattern id="{uid}-minor" class="grid-minor" width="{m}" height="{m}" '
            f'patternUnits="userSpaceOnUse"><path d="M{m} 0H0V{m}" fill="none" '
            f'stroke="{GRID_MINOR}" stroke-width="1"/></pattern>'
        )
    fill = f'<rect width="{big}" height="{big}" fill="url(#{uid}-minor)"/>' if minor else ""
    defs.append(
        f'<pattern id="{uid}-major" class="grid-major" width="{big}" height="{big}" '
        f'patternUnits="userSpaceOnUse">{fill}<path d="M{big} 0H0V{big}" fill="none" '
        f'stroke="{GRID_MAJOR}" stroke-width="{3 if minor else 4}"/></pattern>'
    )
    return (
        f"<defs>{''.join(defs)}</defs>"
        f'<rect class="paper" width="{_u(width_mm)}" height="{_u(height_mm)}" fill="url(#{uid}-major)"/>'
    )


def _pulse(x0_mm: float, baseline_mm: float, scale: Scale) -> str:
    """The calibration pulse: ``pulse_units`` high (10 mm), 0.2 s wide (5 mm)."""
    h = scale.pulse_units * scale.mm_per_unit
    w = PULSE_WIDTH_S * PAPER_SPEED_MM_S
    pts = [(x0_mm, baseline_mm), (x0_mm + 1, baseline_mm), (x0_mm + 1, baseline_mm - h)]
    pts += [(x0_mm + 1 + w, baseline_mm - h), (x0_mm + 1 + w, baseline_mm), (x0_mm + 2 + w, baseline_mm)]
    text = " ".join(f"{_u(x)},{_u(y)}" for x, y in pts)
    return f'<polyline class="pulse" points="{text}" fill="none" stroke="{TRACE}" stroke-width="5"/>'


def _label(x_mm: float, y_mm: float, text: str, size_mm: float = 3.5) -> str:
    return (
        f'<text x="{_u(x_mm)}" y="{_u(y_mm)}" font-size="{_u(size_mm)}" '
        f'font-family="sans-serif">{escape(text)}</text>'
    )


def _svg(width_mm: float, height_mm: float, body: str, *, css_class: str, title: str | None) -> str:
    label = f"<title>{escape(title)}</title>" if title else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css_class}" width="{width_mm:g}mm" '
        f'height="{height_mm:g}mm" viewBox="0 0 {_u(width_mm)} {_u(height_mm)}" '
        f'preserveAspectRatio="xMinYMin meet" role="img">{label}{body}</svg>'
    )


def check_signal(signal: np.ndarray, fs: float, leads: Sequence[str] = LEADS) -> np.ndarray:
    """(12, n) float array in ``LEADS`` order; ValueError naming what is wrong."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(leads) or x.shape[1] < 2:
        raise ValueError(f"signal: expected ({len(leads)}, samples), got shape {x.shape}")
    if not (np.isfinite(fs) and fs > 0):
        raise ValueError(f"fs: {fs!r} is not a positive rate")
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def twelve_lead(
    signal: np.ndarray,
    fs: float,
    scale: Scale = MV,
    *,
    uid: str = "ecg",
    rhythm: bool = True,
    compact: bool = False,
    title: str | None = None,
) -> str:
    """A 12-lead ECG as SVG in the 3 x 4 layout (each column its own 2.5 s) and a 10 s lead II strip.

    ``compact`` (thumbnails): no 1 mm grid, no calibration pulse, no caption, no rhythm strip; lead labels
    large enough to read at thumbnail size, each row's traces clipped to the row, so that large
    complexes do not run into the next row, and recordings above ``THUMB_FS`` ``thinned`` for drawing.
    """
    x = check_signal(signal, fs)
    n_show = min(x.shape[1], int(round(SECONDS * fs)))
    col_s = SECONDS / COLUMNS
    col_n = int(round(col_s * fs))
    margin = 0.0 if compact else PULSE_MM
    rows = ROWS + (1 if rhythm and not compact else 0)
    width = margin + SECONDS * PAPER_SPEED_MM_S + (0 if compact else MAJOR_MM)
    caption_mm = 0.0 if compact else 8.0
    height = rows * ROW_MM + MAJOR_MM + caption_mm
    parts = [_grid(uid, width, rows * ROW_MM + MAJOR_MM, minor=not compact)]
    stroke = f'stroke="{TRACE}" stroke-width="{8 if compact else 5}" fill="none"'
    for row in range(ROWS):
        baseline = MAJOR_MM + ROW_MM * row + ROW_MM / 2
        clip = ""
        if compact:
            top = baseline - ROW_MM / 2
            parts.append(
                f'<clipPath id="{uid}-row{row}"><rect x="0" y="{_u(top)}" width="{_u(width)}" '
                f'height="{_u(ROW_MM)}"/></clipPath>'
            )
            clip = f' clip-path="url(#{uid}-row{row})"'
        if not compact:
            parts.append(_pulse(0.0, baseline, scale))
        for col in range(COLUMNS):
            lead = col * ROWS + row
            start = col * col_n
            stop = min(start + col_n, n_show)
            x0 = margin + col * col_s * PAPER_SPEED_MM_S
            if stop > start:
                values = x[lead, start : stop + (1 if stop < n_show and col < COLUMNS - 1 else 0)]
                trace = _trace(values, fs, x0, baseline, scale, THUMB_FS if compact else None)
                parts.append(
                    f'<g class="lead" data-lead="{LEADS[lead]}" data-t0="{start / fs:g}" '
                    f"{stroke}{clip}>{trace}</g>"
                )
            if compact:
                parts.append(
                    _label(
                        x0 + 1.5, baseline - ROW_MM / 2 + THUMB_LABEL_MM, LEADS[lead], THUMB_LABEL_MM
                    ).replace(
                        "<text ",
                        f"<text {THUMB_LABEL_STYLE} ",
                        1,
                    )
                )
            else:
                parts.append(_label(x0 + 1.5, baseline - ROW_MM / 2 + 4.5, LEADS[lead], 3.5))
            if col:
                parts.append(
                    f'<line class="separator" x1="{_u(x0)}" x2="{_u(x0)}" y1="{_u(baseline - 3)}" '
                    f'y2="{_u(baseline + 3)}" stroke="{TRACE}" stroke-width="5"/>'
                )
    if rows > ROWS:
        baseline = MAJOR_MM + ROW_MM * ROWS + ROW_MM / 2
        lead = LEADS.index(RHYTHM_LEAD)
        parts.append(_pulse(0.0, baseline, scale))
        parts.append(
            f'<g class="lead rhythm" data-lead="{RHYTHM_LEAD}" data-t0="0" {stroke}>'
            f"{_trace(x[lead, :n_show], fs, margin, baseline, scale)}</g>"
        )
        parts.append(_label(margin + 1.5, baseline - ROW_MM / 2 + 4.5, RHYTHM_LEAD))
    if caption_mm:
        parts.append(_label(margin, rows * ROW_MM + MAJOR_MM + 5.5, scale.caption(), 3.5))
    return _svg(width, height, "".join(parts), css_class="ecg compact" if compact else "ecg", title=title)


def overlay(
    query: np.ndarray,
    neighbour: np.ndarray,
    fs: float,
    shift: int,
    scale: Scale = MV,
    *,
    uid: str = "cmp",
    title: str | None = None,
) -> str:
    """Query (black) and neighbour (blue) lead by lead over 10 s, the neighbour moved ``shift`` samples
    later (negative: earlier) so that the chosen beats line up; samples moved outside 0-10 s are dropped."""
    q, nb = check_signal(query, fs), check_signal(neighbour, fs)
    n = min(q.shape[1], int(round(SECONDS * fs)))
    row = 25.0
    width = PULSE_MM + SECONDS * PAPER_SPEED_MM_S + MAJOR_MM
    height = len(LEADS) * row + MAJOR_MM + 8.0
    parts = [_grid(uid, width, len(LEADS) * row + MAJOR_MM, minor=True)]
    for i, lead in enumerate(LEADS):
        baseline = MAJOR_MM + row * i + row / 2
        parts.append(_pulse(0.0, baseline, scale))
        lo, hi = max(0, -shift), min(nb.shape[1], n - shift)
        parts.append(
            f'<g class="lead" data-lead="{lead}" fill="none">'
            + _trace(
                q[i, :n], fs, PULSE_MM, baseline, scale, stroke=TRACE, stroke_width="5", data_role="query"
            )
            + (
                _trace(
                    nb[i, lo:hi],
                    fs,
                    PULSE_MM + (lo + shift) / fs * PAPER_SPEED_MM_S,
                    baseline,
                    scale,
                    stroke=OVERLAY,
                    stroke_width="5",
                    stroke_opacity="0.75",
                    data_role="neighbour",
                )
                if hi > lo
                else ""
            )
            + "</g>"
        )
        parts.append(_label(PULSE_MM + 1.5, baseline - row / 2 + 4.5, lead))
    parts.append(_label(PULSE_MM, len(LEADS) * row + MAJOR_MM + 5.5, scale.caption()))
    return _svg(width, height, "".join(parts), css_class="ecg overlay", title=title)


def median_beats(
    query: np.ndarray,
    neighbour: np.ndarray,
    fs: float,
    r_at: int,
    scale: Scale = MV,
    *,
    uid: str = "beats",
    title: str | None = None,
) -> str:
    """Query (black) and neighbour (blue) median beats, each lead in the 3 x 4 layout, both with their
    R peak at sample ``r_at`` (marked by a dashed line): beat-aligned, whatever the rhythm."""
    q, nb = check_signal(query, fs), check_signal(neighbour, fs)
    n = min(q.shape[1], nb.shape[1])
    cell = n / fs * PAPER_SPEED_MM_S + MAJOR_MM  # a beat and a 5 mm gap
    width = PULSE_MM + COLUMNS * cell
    height = ROWS * ROW_MM + MAJOR_MM + 8.0
    parts = [_grid(uid, width, ROWS * ROW_MM + MAJOR_MM, minor=True)]
    for row in range(ROWS):
        baseline = MAJOR_MM + ROW_MM * row + ROW_MM / 2
        parts.append(_pulse(0.0, baseline, scale))
        for col in range(COLUMNS):
            lead = col * ROWS + row
            x0 = PULSE_MM + col * cell
            r_mm = x0 + r_at / fs * PAPER_SPEED_MM_S
            parts.append(
                f'<line class="r-mark" x1="{_u(r_mm)}" x2="{_u(r_mm)}" y1="{_u(baseline - ROW_MM / 2 + 6)}" '
                f'y2="{_u(baseline + ROW_MM / 2 - 2)}" stroke="#888" stroke-width="3" '
                'stroke-dasharray="15 15"/>'
            )
            parts.append(
                f'<g class="lead" data-lead="{LEADS[lead]}" fill="none">'
                + _trace(
                    q[lead, :n], fs, x0, baseline, scale, stroke=TRACE, stroke_width="5", data_role="query"
                )
                + _trace(
                    nb[lead, :n],
                    fs,
                    x0,
                    baseline,
                    scale,
                    stroke=OVERLAY,
                    stroke_width="5",
                    stroke_opacity="0.75",
                    data_role="neighbour",
                )
                + "</g>"
            )
            parts.append(_label(x0 + 1.5, baseline - ROW_MM / 2 + 4.5, LEADS[lead]))
    parts.append(_label(PULSE_MM, ROWS * ROW_MM + MAJOR_MM + 5.5, scale.caption() + " · median beats"))
    return _svg(width, height, "".join(parts), css_class="ecg beats", title=title)
