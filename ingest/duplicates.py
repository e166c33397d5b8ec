"""Measure the content score that tells a copy of an ECG from a different ECG (sets ``COPY_THRESHOLD``).

Every ECG of the default ingest (``ptb-xl`` at its default 100 Hz, ``challenge``, ``cinc2021`` when
present, ``hospital``) is read, prepared, fingerprinted (``ecg.fingerprint``) and embedded as ingest
does. Pairs scored, each by ``fingerprint.score``:
- copies: every Challenge ``ptb_xl/HR<ecg_id>`` (from PTB-XL's 500 Hz files) with its PTB-XL original
  (100 Hz file), and the hospital files the sources name as one ECG in several formats (aECG = SCP-ECG
  = ECG Toolkit DICOM; MUSE = ecg2dcm DICOM: ``hospital/SOURCES.tsv``);
- identical content: two files of one dataset with one content hash (a real duplicate);
- same patient: every pair of one PTB-XL patient's ECGs (different recordings, never copies);
- nearest non-copies: each ECG's ``--neighbours`` nearest by embedding that are none of the above
  (ingest confirms only its ``copies.CANDIDATES`` nearest; the wider set stresses the score);
- synthetic copies of the PTB-XL ECGs that have a 500 Hz file, against their 100 Hz original: the
  500 Hz file, x5 gain, 0.16 s cut at the start, + noise and 50 Hz hum, 8 leads in uV (MUSE-like),
  three flat leads; with the original's embedding rank among all ECGs.

    python -m ecgsearch.ingest.duplicates ../shared/data --out results/duplicate_threshold.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecgsearch.ecg import dsp, fingerprint, signals
from ecgsearch.ecg.identity import Pseudonymizer
from ecgsearch.ecg.schema import EcgPayload
from ecgsearch.ingest.sources import enumerate_source, load, load_file

if TYPE_CHECKING:
    from ecgsearch.export.runtime import Embedder

QUANTILES = (0.0, 0.01, 0.5, 0.99, 1.0)
FOLDERS = ("ptb-xl", "challenge", "cinc2021", "hospital")
# hospital/SOURCES.tsv: files that hold one ECG. hl7aecg_fda_subject1_0.xml is, by its source, the FDA's
# copy of the HL7 example "with only subject ID/time/timepoint changed": the same recording again, a copy
# (its record id and content hash equal the example's, so ingest skips it as the ECG already stored).
HOSPITAL_COPIES = (
    (
        "hl7aecg_Example_aECG.xml",
        "hl7aecg_fda_subject1_0.xml",
        "scp_ecgtoolkit_Example.scp",
        "dicom_ecgtoolkit_Example.dcm",
    ),
    ("muse_guangxi_sinus_rhythm.xml", "dicom_ecg2dcm_guangxi_sinus_rhythm.dcm"),
)
EIGHT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _load(data_dir: Path) -> tuple[list[EcgPayload], list[str], np.ndarray]:
    """Payloads, file names (hospital) or '' and prepared signals of every readable ECG."""
    keys = Pseudonymizer.ephemeral()
    payloads, names, prepared = [], [], []
    for folder in FOLDERS:
        if not (data_dir / folder).is_dir():
            continue
        for candidate in enumerate_source(data_dir / folder):
            try:
                record = load_file(candidate, keys) if candidate.file_format else load(candidate, keys)
            except ValueError:  # unreadable or unpreparable: ingest rejects it too
                continue
            payloads.append(record.payload)
            names.append(candidate.path.name if candidate.file_format else "")
            prepared.append(record.signal)
    return payloads, names, np.stack(prepared)


def _summary(values: list[float]) -> dict[str, float | int]:
    out: dict[str, float | int] = {"n": len(values)}
    if values:
        out |= {f"q{q:g}": round(float(np.quantile(values, q)), 5) for q in QUANTILES}
    return out


def _synthetic(
    data_dir: Path,
    embedder: Embedder,
    vectors: np.ndarray,
    index: dict[str, int],
    fps: list[fingerprint.Print],
    candidates: int,
) -> dict:
    """Copies made here of PTB-XL ECGs with a 500 Hz file: score to the 100 Hz original, its cosine and
    its rank among the copy's nearest by embedding (ingest confirms the ``candidates`` nearest)."""
    rng = np.random.default_rng(0)
    folder = data_dir / "ptb-xl" / "records500" / "00000"
    scores: dict[str, list[float]] = defaultdict(list)
    ranks: dict[str, list[int]] = defaultdict(list)
    cosines: dict[str, list[float]] = defaultdict(list)
    for header in sorted(folder.glob("*_hr.hea")):
        row = index.get(f"ptbxl:{int(header.name[:5])}")
        if row is None:
            continue
        raw = signals.read_wfdb(header.with_suffix(""))
        x, leads = raw.signal, list(raw.leads)
        cut = x[:, 80:]  # 0.16 s at 500 Hz
        t = np.arange(cut.shape[1]) / raw.fs
        eight = [leads.index(n) for n in EIGHT]
        flat = x.copy()
        flat[[leads.index(n) for n in ("V2", "V4", "V6")]] = 0.0
        variants = {
            "500hz_file": (x, leads, "mV"),
            "500hz_x5_gain": (5 * x, leads, "mV"),
            "cut_0.16s_x5_gain": (5 * cut, leads, "mV"),
            "cut_0.16s_noise_hum": (
                cut + rng.normal(0, 0.02, cut.shape) + 0.02 * np.sin(2 * np.pi * 50 * t),
                leads,
                "mV",
            ),
            "8_leads_uV_4.88uV_steps": (np.round(cut[eight] * 1000 / 4.88) * 4.88, list(EIGHT), "uV"),
            "V2_V4_V6_flat": (flat, leads, "mV"),
            "100hz_upsampled_500hz_x5": (5 * dsp.resample_poly(x[:, ::5], 5, 1, axis=-1), leads, "mV"),
        }
        names = list(variants)
        prepared = np.stack([signals.prepare_array(s, raw.fs, ld, units=u) for s, ld, u in variants.values()])
        embedded = embedder.embed(prepared)
        for name, ecg, vector in zip(names, prepared, embedded, strict=True):
            scores[name].append(fingerprint.score(fingerprint.compute(ecg), fps[row]))
            cosines[name].append(float(vectors[row] @ vector))
            ranks[name].append(int((vectors @ vector > cosines[name][-1]).sum()) + 1)
    return {
        name: {
            "score": _summary(scores[name]),
            "cosine_to_original": _summary(cosines[name]),
            "original_rank_max": max(ranks[name]),
            "original_within_candidates": round(float(np.mean(np.array(ranks[name]) <= candidates)), 4),
        }
        for name in scores
    }


def _marking_cost(
    payloads: list[EcgPayload], vectors: np.ndarray, version: str, candidates: int
) -> dict[str, float | int | None]:
    """What marking adds to ingest: ``copies.mark_copies`` on each batch of 256 against an embedded
    store holding every earlier batch (search, fingerprints read with the hits, scores), ms per ECG;
    and which ECGs it marks, the ingest order being this measure's (every folder in FOLDERS' order)."""
    import tempfile

    from ecgsearch.search.engine.copies import mark_copies
    from ecgsearch.search.engine.store import EdgeStore

    fresh = [p.model_copy(update={"duplicate_of": None}) for p in payloads]
    seconds, marked = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp) / "store")
        store.create_collection(dim=vectors.shape[1], model_version=version)
        try:
            for i in range(0, len(fresh), 256):
                start = time.perf_counter()
                marked += mark_copies(fresh[i : i + 256], vectors[i : i + 256], store, k=candidates)
                seconds += time.perf_counter() - start
                store.upsert(fresh[i : i + 256], vectors[i : i + 256])
        finally:
            store.close()
    return {
        "mark_per_ecg_ms": round(seconds / len(fresh) * 1e3, 3),
        "marked": marked,
        # the cores are shared: a loaded machine inflates the time (compare runs at like load only)
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def measure(
    data_dir: Path,
    model: Path | None = None,
    threads: int = 2,
    neighbours: int = 20,
    candidates: int | None = None,
) -> dict:
    """Score distributions of copies, same-patient pairs and nearest non-copies; see the module doc.
    ``candidates``: the nearest an ingest confirms (default: ``copies.CANDIDATES``, what ingest does)."""
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.copies import CANDIDATES

    confirmed = candidates or CANDIDATES

    embedder = Embedder(model, threads=threads)
    payloads, names, prepared = _load(data_dir)
    n = len(payloads)
    start = time.perf_counter()
    fps = [fingerprint.ready(fingerprint.compute(x)) for x in prepared]
    fp_ms = (time.perf_counter() - start) / n * 1e3
    vectors = np.concatenate([embedder.embed(prepared[i : i + 256]) for i in range(0, n, 256)]).astype(
        np.float32
    )
    ids = [p.record_id for p in payloads]
    index = {r: i for i, r in enumerate(ids)}
    by_name = {name: i for i, name in enumerate(names) if name}

    copies: set[tuple[int, int]] = set()
    for i, p in enumerate(payloads):
        native = p.record_id.split(":", 1)[1]
        if p.dataset == "ptb_xl" and native.startswith("HR"):
            j = index.get(f"ptbxl:{int(native[2:])}")
            if j is not None:
                copies.add((min(i, j), max(i, j)))
    for group in HOSPITAL_COPIES:
        rows = sorted(by_name[f] for f in group)
        copies |= {(a, b) for a in rows for b in rows if a < b}
    by_hash = defaultdict(list)
    for i, p in enumerate(payloads):
        by_hash[p.content_hash].append(i)
    identical = {(a, b) for g in by_hash.values() for a in g for b in g if a < b}
    ptb_patients = defaultdict(list)
    for i, p in enumerate(payloads):
        if p.dataset == "ptbxl":
            ptb_patients[p.patient_id].append(i)
    same_patient = {(a, b) for g in ptb_patients.values() for a in g for b in g if a < b} - copies

    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1)
    rank = {(i, int(j)): r + 1 for i in range(n) for r, j in enumerate(order[i, :neighbours])}
    near = {(min(i, j), max(i, j)) for (i, j) in rank} - copies - identical - same_patient
    candidates_ = {(min(i, j), max(i, j)) for (i, j), r in rank.items() if r <= confirmed}

    start = time.perf_counter()
    score = {pair: fingerprint.score(fps[pair[0]], fps[pair[1]]) for pair in copies | identical | near}
    score |= {pair: fingerprint.score(fps[pair[0]], fps[pair[1]]) for pair in same_patient}
    pair_ms = (time.perf_counter() - start) / len(score) * 1e3

    def name(i: int) -> str:
        return names[i] or ids[i]

    threshold = fingerprint.COPY_THRESHOLD
    noncopy = sorted(((score[p], p) for p in near | same_patient), reverse=True)
    missed = [
        (name(a), name(b))
        for a, b in copies | identical
        if score[(a, b)] < threshold or ((a, b) not in candidates_)
    ]
    return {
        "model_version": embedder.version,
        "threshold": threshold,
        "n_ecgs": n,
        "candidates_per_ecg": confirmed,
        "copies": {
            f"{name(a)} = {name(b)}": {
                "score": round(score[(a, b)], 5),
                "cosine": round(float(sim[a, b]), 5),
                "rank": [rank.get((a, b)), rank.get((b, a))],
            }
            for a, b in sorted(copies | identical)
        },
        "score_copies": _summary([score[p] for p in copies]),
        "score_identical_content": _summary([score[p] for p in identical]),
        "score_ptbxl_same_patient": _summary([score[p] for p in same_patient]),
        f"score_nearest_{neighbours}_non_copies": _summary([score[p] for p in near]),
        "score_candidate_non_copies": _summary([score[p] for p in near & candidates_]),
        "top_non_copies": [
            {"a": name(a), "b": name(b), "score": round(s, 5), "same_patient": (a, b) in same_patient}
            for s, (a, b) in noncopy[:10]
        ],
        "copies_missed_at_threshold": missed,
        "non_copies_at_or_above_threshold": sum(s >= threshold for s, _ in noncopy),
        "margin_below_lowest_copy": round(min(score[p] for p in copies) - threshold, 5),
        "margin_above_highest_non_copy": round(threshold - noncopy[0][0], 5),
        "synthetic_copies": _synthetic(data_dir, embedder, vectors, index, fps, confirmed),
        "cost_ms": {"fingerprint_and_ready_per_ecg": round(fp_ms, 3), "score_per_pair": round(pair_ms, 3)},
        "ingest_marking": _marking_cost(payloads, vectors, embedder.version, confirmed),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="folder holding ptb-xl/, challenge/, hospital/")
    parser.add_argument("--model", type=Path, default=None, help="ONNX encoder (default: bundled)")
    parser.add_argument("--neighbours", type=int, default=20, help="nearest non-copies scored per ECG")
    parser.add_argument(
        "--candidates", type=int, default=None, help="nearest confirmed per ECG (default: ingest's)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/duplicate_threshold.json"))
    args = parser.parse_args(argv)
    result = measure(args.data_dir, args.model, neighbours=args.neighbours, candidates=args.candidates)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "copies"}, indent=2))


if __name__ == "__main__":
    main()
