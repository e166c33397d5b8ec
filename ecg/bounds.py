"""The bounds every ECG is held to, wherever it enters: a file the readers decode, a raw ECG a caller
sends, a record ingest prepares. Declared once here; the readers, preparation, the service and ingest
import them, so no entry point accepts what a later step refuses.

Standard library only: command modules read these for their help texts without loading numpy.
"""

from __future__ import annotations

# An ECG file's bytes (readers, SearchByFile, UpsertEcgs). The largest export in shared/data/hospital
# is under 1 MB; 50 MiB leaves room for long multi-channel recordings while bounding a decode.
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_CHANNELS = 16  # channels a file may hold (12 leads plus rhythm, pacing and spare channels)
MAX_SECONDS = 600.0  # of samples in one file: 10 minutes; preparation reads the first 10 s
# Sampling rates accepted anywhere (files and requests). Below 50 Hz the QRS complex (energy up to
# ~40 Hz) is aliased and no ECG archive records that slowly; 10 kHz covers high-resolution and
# pacemaker-spike recordings. The range also bounds the resampling cost: the polyphase ratio stays
# within 1000/1.
MIN_RATE_HZ = 50.0
MAX_RATE_HZ = 10_000.0
