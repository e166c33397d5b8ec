"""Complete a file's leads to the model's 12 in model order, deriving III, aVR, aVL, aVF from I and II.

The same Einthoven/Goldberger relations as ``ecgsearch.ecg.signals`` (which derives them again,
identically, when preparing); here they give callers a 12-lead (n, samples) view of any file.
"""

from __future__ import annotations

import numpy as np

from ecgsearch.ecg.readers.types import ReadEcg, ReaderError
from ecgsearch.ecg.signals import LEADS

_DERIVABLE = {"III", "aVR", "aVL", "aVF"}


def complete_leads(ecg: ReadEcg) -> np.ndarray:
    """(12, n_samples) float32 in mV, in ``signals.LEADS`` order."""
    given = {name.upper(): i for i, name in enumerate(ecg.lead_names)}
    x = ecg.signal.astype(np.float64)
    missing = [name for name in LEADS if name.upper() not in given]
    if any(m not in _DERIVABLE for m in missing) or (missing and not {"I", "II"} <= set(given)):
        raise ReaderError("lead_names", f"cannot complete 12 leads from {', '.join(ecg.lead_names)}")
    derived: dict[str, np.ndarray] = {}
    if missing:
        lead_i, lead_ii = x[given["I"]], x[given["II"]]
        derived = {
            "III": lead_ii - lead_i,
            "aVR": -(lead_i + lead_ii) / 2,
            "aVL": lead_i - lead_ii / 2,
            "aVF": lead_ii - lead_i / 2,
        }
    out = np.stack([x[given[n.upper()]] if n.upper() in given else derived[n] for n in LEADS])
    return out.astype(np.float32)
