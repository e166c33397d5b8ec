"""Uploaded ECG files: read here (any format ``encoder.readers`` knows), held briefly in memory.

The service has no search-by-file call, so the viewer reads the file, completes the 12 leads in mV
and sends the samples (``search_by_ecg``); the service prepares them like every stored ECG. The
upload is kept (signal and the machine's measurements only: no file name, no other header field)
so that refining the filter or opening the comparison does not need the file again; the holder is
bounded in count and age.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ecgsearch.ecg import signals
from ecgsearch.ecg.readers import Measurements, ReaderError, complete_leads, read_ecg

MAX_HELD = 16
MAX_AGE_S = 3600.0


class UploadError(ValueError):
    """A file the viewer cannot search with; the message says why, never the file's name or content."""


@dataclass(frozen=True)
class HeldEcg:
    """One upload: the 12 leads in mV at their own rate, and the same ECG as the service prepares it."""

    signal: np.ndarray  # (12, n) float32 mV, signals.LEADS order
    fs: float
    format: str
    prepared: np.ndarray  # (12, MODEL_SAMPLES), RMS-normalised, MODEL_FS
    measurements: Measurements  # the acquiring machine's intervals and axes, as the file states them

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs


def read_upload(data: bytes) -> HeldEcg:
    """Bytes of an ECG file -> HeldEcg; UploadError naming the problem (format, leads, length)."""
    if not data:
        raise UploadError("the file is empty")
    try:
        ecg = read_ecg(data)
        full = complete_leads(ecg)
    except ReaderError as exc:
        raise UploadError(f"not a readable ECG file ({exc})") from None
    try:
        prepared = signals.prepare_array(full, ecg.sampling_rate_hz, signals.LEADS, record="upload")
    except signals.SignalError as exc:
        raise UploadError(f"the ECG cannot be searched ({exc.reason})") from None
    return HeldEcg(full, ecg.sampling_rate_hz, ecg.format, prepared, ecg.header.measurements)


class Uploads:
    """A small thread-safe holder of recent uploads, by an unguessable token."""

    def __init__(self, max_held: int = MAX_HELD, max_age_s: float = MAX_AGE_S) -> None:
        self._held: OrderedDict[str, tuple[float, HeldEcg]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_held = max_held
        self.max_age_s = max_age_s

    def add(self, ecg: HeldEcg) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._held[token] = (time.monotonic(), ecg)
            while len(self._held) > self.max_held:
                self._held.popitem(last=False)
        return token

    def get(self, token: str) -> HeldEcg | None:
        with self._lock:
            entry = self._held.get(token)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.max_age_s:
                del self._held[token]
                return None
            self._held.move_to_end(token)
            return entry[1]
