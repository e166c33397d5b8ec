"""Measure the cosine that tells a copy of an ECG from a different ECG (sets ``DUPLICATE_THRESHOLD``).

Copies: the Challenge re-distributes PTB-XL ECGs (``challenge/ptb_xl/HR<ecg_id>``, from the 500 Hz
files); each is compared with its PTB-XL original read from the 500 Hz file (``--prefer-hr``; same
rate as the copy) and from the 100 Hz file (the default ingest: PTB-XL's own down-sampling).
Different ECGs: every PTB-XL ECG's nearest *other* PTB-XL ECG (the same patient's other recordings
included: they are different ECGs and must not be taken for copies), and every Challenge record's
nearest other record among PTB-XL and the Challenge, its own PTB-XL original left out.

    python -m ecgsearch.ingest.duplicates ../shared/data --out results/duplicate_threshold.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecgsearch.ecg import signals
from ecgsearch.ecg.identity import DUPLICATE_THRESHOLD, Pseudonymizer
from ecgsearch.ingest.sources import enumerate_source, load

if TYPE_CHECKING:
    from ecgsearch.export.runtime import Embedder

QUANTILES = (0.0, 0.5, 0.9, 0.99, 0.999, 1.0)


def _embed(source: Path, embedder: Embedder, *, dataset: str | None = None) -> tuple[list, np.ndarray]:
    keys = Pseudonymizer.ephemeral()
    payloads, prepared = [], []
    for candidate in enumerate_source(source, dataset=dataset):
        try:
            record = load(candidate, keys)
        except signals.SignalError:
            continue
        payloads.append(record.payload)
        prepared.append(record.signal)
    vectors = np.concatenate(
        [embedder.embed(np.stack(prepared[i : i + 256])) for i in range(0, len(prepared), 256)]
    )
    return payloads, vectors


def _summary(values: np.ndarray) -> dict[str, float | int]:
    out: dict[str, float | int] = {"n": int(values.size)}
    out |= {f"q{q:g}": round(float(np.quantile(values, q)), 5) for q in QUANTILES}
    return out


def measure(data_dir: Path, model: Path | None = None, threads: int = 2) -> dict:
    """Cosines of copies and of nearest different ECGs, and the margin left by the threshold."""
    from ecgsearch.export.runtime import Embedder

    embedder = Embedder(model, threads=threads)
    ptb, ptb_v = _embed(data_dir / "ptb-xl", embedder)
    chal, chal_v = _embed(data_dir / "challenge", embedder)
    ptb_index = {p.record_id.split(":")[1]: i for i, p in enumerate(ptb)}
    original = {}  # challenge row -> PTB-XL row of its original
    for i, p in enumerate(chal):
        native = p.record_id.split(":")[1]
        if p.dataset == "ptb_xl" and native.startswith("HR") and str(int(native[2:])) in ptb_index:
            original[i] = ptb_index[str(int(native[2:]))]
    copies = np.array([float(chal_v[i] @ ptb_v[j]) for i, j in original.items()])
    keys = Pseudonymizer.ephemeral()
    wanted = {ptb[j].record_id for j in original.values()}
    hr = {
        c.record_id: c for c in enumerate_source(data_dir / "ptb-xl", prefer_hr=True) if c.record_id in wanted
    }
    same_rate = {}
    for i, j in original.items():
        candidate = hr[ptb[j].record_id]
        if candidate.path.name.endswith("_hr"):
            vector = embedder.embed(load(candidate, keys).signal[None])[0]
            same_rate[chal[i].record_id] = float(chal_v[i] @ vector)
    copies_hr = np.array(list(same_rate.values()))

    sim = ptb_v @ ptb_v.T
    np.fill_diagonal(sim, -np.inf)
    ptb_top1 = sim.max(axis=1)
    same_duration = np.array([[abs(a.duration_s - b.duration_s) <= 0.02 for b in ptb] for a in ptb])
    sim[~same_duration] = -np.inf
    ptb_top1_equal = sim.max(axis=1)

    everyone = np.concatenate([ptb_v, chal_v])
    cross = chal_v @ everyone.T
    for i in range(len(chal)):
        cross[i, len(ptb) + i] = -np.inf  # itself
        if i in original:
            cross[i, original[i]] = -np.inf  # its PTB-XL original: a copy, measured above
    chal_top1 = cross.max(axis=1)
    nearest_different = max(float(ptb_top1.max()), float(chal_top1.max()))
    return {
        "model_version": embedder.version,
        "threshold": DUPLICATE_THRESHOLD,
        "copies": {
            "pairs": {chal[i].record_id: ptb[j].record_id for i, j in original.items()},
            "cosine_to_500hz_original": {k: round(v, 6) for k, v in same_rate.items()},
            "cosine_to_100hz_original": {
                chal[i].record_id: round(float(c), 6)
                for (i, _), c in zip(original.items(), copies, strict=True)
            },
        },
        "copies_same_rate": _summary(copies_hr),
        "copies_100hz_original": _summary(copies),
        "ptbxl_top1_other_ecg": _summary(ptb_top1),
        "ptbxl_top1_other_ecg_equal_duration": _summary(ptb_top1_equal[np.isfinite(ptb_top1_equal)]),
        "challenge_top1_other_ecg": _summary(chal_top1),
        "different_at_or_above_threshold": int((ptb_top1 >= DUPLICATE_THRESHOLD).sum())
        + int((chal_top1 >= DUPLICATE_THRESHOLD).sum()),
        "copies_same_rate_below_threshold": int((copies_hr < DUPLICATE_THRESHOLD).sum()),
        "copies_100hz_original_below_threshold": int((copies < DUPLICATE_THRESHOLD).sum()),
        "nearest_different": round(nearest_different, 5),
        "margin_to_nearest_different": round(DUPLICATE_THRESHOLD - nearest_different, 5),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="folder holding ptb-xl/ and challenge/")
    parser.add_argument("--model", type=Path, default=None, help="ONNX encoder (default: bundled)")
    parser.add_argument("--out", type=Path, default=Path("results/duplicate_threshold.json"))
    args = parser.parse_args(argv)
    result = measure(args.data_dir, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "copies"}, indent=2))


if __name__ == "__main__":
    main()
