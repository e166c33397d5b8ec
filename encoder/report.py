"""Fold-9 evaluation of an encoder for the training report: retrieval agreement and a linear probe.

Only folds 1-9 are read: fold 10 is held out for the final evaluation. Agreement is superclass
neighbour agreement@10 (same patient excluded) for fold-9 queries, searching fold 9 alone and
searching folds 1-9. The probe is a logistic regression per superclass on standardised folds 1-8
embeddings, scored by macro ROC-AUC on fold 9 (needs scikit-learn; skipped without it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgsearch.ecg import features, ptbxl
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import EcgArrays
from ecgsearch.encoder.model import Encoder, RhythmFeatures, ServingEncoder
from ecgsearch.encoder.probe import linear_probe_auc
from ecgsearch.encoder.retrieval import neighbour_agreement
from ecgsearch.encoder.train import embed


def fold9_report(
    encoder: torch.nn.Module, data: EcgArrays, device: torch.device, val_fold: int = 9
) -> dict[str, Any]:
    """Agreement@10 of fold-9 queries (within fold 9; searching folds 1-9) and the probe's macro-AUC."""
    data = data.select(data.folds <= val_fold)
    emb = embed(encoder, data.x, device)
    is_val = data.folds == val_fold
    val = data.select(is_val)
    out: dict[str, Any] = {
        "fold9_within_fold9": neighbour_agreement(emb[is_val], val.superclasses, val.patient_ids),
        "fold9_queries_folds1to9": neighbour_agreement(
            emb, data.superclasses, data.patient_ids, query_mask=is_val
        ),
        "n_fold9_queries": int(sum(1 for s in val.superclasses if s)),
        "n_searched": len(data),
    }
    train = ~is_val
    has_label = np.array([len(s) > 0 for s in data.superclasses])
    try:
        probe = linear_probe_auc(
            emb[train & has_label],
            [s for s, m in zip(data.superclasses, train & has_label, strict=True) if m],
            emb[is_val & has_label],
            [s for s, m in zip(data.superclasses, is_val & has_label, strict=True) if m],
        )
    except ImportError:
        probe = {"macro_auc": None, "note": "scikit-learn not installed"}
    out["probe"] = probe
    return out


# --- variant comparison on fold 9: retrieval by superclass and by code, and shift stability ---

SHIFTS = (4, 8, 16, 32, 50)
CODES = ("AFIB", "LVH")
EmbedFn = Callable[[np.ndarray], np.ndarray]


def code_label_sets(data: EcgArrays, data_root: str | Path, code: str) -> list[frozenset[str]]:
    """{code} for the rows whose PTB-XL statements include ``code`` (any likelihood), else empty."""
    codes = {r.ecg_id: r.scp_codes for r in ptbxl.read_table(Path(data_root) / "ptb-xl")}
    return [frozenset({code}) if code in codes[int(e)] else frozenset() for e in data.ecg_ids]


def retrieval_metrics(
    emb: np.ndarray, data: EcgArrays, code_sets: dict[str, list[frozenset[str]]], val_fold: int = 9
) -> dict[str, Any]:
    """P@10 any superclass of fold-9 queries (folds 1-9 searched; fold 9 alone) and per-code P@10.

    Per-code P@10 is over every ECG of folds 1-9 carrying the code (the encoder never sees labels):
    the fraction of its 10 nearest, same patient excluded, that carry it too.
    """
    is_val = data.folds == val_fold
    val = data.select(is_val)
    out: dict[str, Any] = {
        "p10_superclass_fold9": neighbour_agreement(
            emb, data.superclasses, data.patient_ids, query_mask=is_val
        ),
        "p10_superclass_fold9_within_fold9": neighbour_agreement(
            emb[is_val], val.superclasses, val.patient_ids
        ),
    }
    for code, sets in code_sets.items():
        out[f"p10_{code}_folds1to9"] = neighbour_agreement(emb, sets, data.patient_ids)
        out[f"n_{code}_queries"] = int(sum(1 for s in sets if s))
    return out


def shift_stability(
    embed_fn: EmbedFn, data: EcgArrays, shifts: tuple[int, ...] = SHIFTS, val_fold: int = 9, k: int = 10
) -> dict[str, dict[str, float]]:
    """Per circular shift: mean cosine of each fold-9 ECG to itself shifted, and its top-k overlap.

    The top-k is searched among the unshifted folds 1-9 (own ECG and own patient excluded); the
    overlap is the fraction of the unshifted query's k neighbours that the shifted query also finds.
    """
    base = _unit(embed_fn(data.x))
    queries = np.flatnonzero(data.folds == val_fold)
    patients = np.array(
        [hash(("p", p)) if p is not None else hash(("r", i)) for i, p in enumerate(data.patient_ids)]
    )
    before = _top_k(base[queries], base, queries, patients, k)
    out = {}
    for s in shifts:
        moved = _unit(embed_fn(np.roll(data.x[queries], s, axis=2)))
        after = _top_k(moved, base, queries, patients, k)
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(before, after, strict=True)])
        cosine = float(np.mean(np.sum(moved * base[queries], axis=1)))
        out[str(s)] = {"cosine": cosine, "top10_overlap": float(overlap)}
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _top_k(q: np.ndarray, base: np.ndarray, rows: np.ndarray, patients: np.ndarray, k: int) -> np.ndarray:
    sim = q @ base.T
    sim[patients[rows][:, None] == patients[None, :]] = -np.inf
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def torch_embed_fn(encoder: Encoder) -> EmbedFn:
    """An EmbedFn over a torch encoder on the CPU."""
    dev = torch.device("cpu")
    return lambda x: embed(encoder, np.ascontiguousarray(x, dtype=np.float32), dev)


def variant_report(
    embed_fn: EmbedFn, data: EcgArrays, code_sets: dict[str, list[frozenset[str]]]
) -> dict[str, Any]:
    """Fold-9 retrieval metrics and shift stability of one embedding function over folds 1-9."""
    return {
        **retrieval_metrics(_unit(embed_fn(data.x)), data, code_sets),
        "shift_stability": shift_stability(embed_fn, data),
    }


def serving_embed_fn(
    encoder: Encoder, config: EncoderConfig, stats: dict[str, Any], weight: float
) -> EmbedFn:
    """An EmbedFn over the encoder with rhythm features appended at ``weight`` (0: the encoder alone)."""
    if weight <= 0:
        return torch_embed_fn(encoder)
    module = ServingEncoder(encoder, RhythmFeatures(tuple(stats["mean"]), tuple(stats["std"])), weight).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            batches = [
                torch.from_numpy(np.ascontiguousarray(x[i : i + 256], dtype=np.float32))
                for i in range(0, len(x), 256)
            ]
            return torch.cat([module(b) for b in batches]).numpy()

    return run


def compare_variants(
    variants: dict[str, Path],
    seeds: tuple[int, ...],
    data_root: str | Path,
    runs: Path,
    *,
    rhythm_weights: tuple[float, ...] = (0.0,),
    amplitude_weights: tuple[float, ...] = (),
    cache_dir: str | Path | None = None,
    train_missing: bool = True,
) -> dict[str, Any]:
    """Train (unless done) every variant config x seed into ``runs/<variant>/s<seed>``, then score its
    best checkpoint on fold 9 (P@10 any superclass, AFIB and LVH P@10 over folds 1-9, shift stability),
    alone and with rhythm features appended at each weight. Never reads fold 10.

    ``amplitude_weights``: also append the per-lead log-RMS in mV of the prepared ECGs (retrieval
    only, since a circular shift leaves a lead's RMS unchanged).
    """
    from ecgsearch.encoder.config import load_config
    from ecgsearch.encoder.data import load_ptbxl
    from ecgsearch.encoder.model import load_checkpoint
    from ecgsearch.encoder.train import train

    data = load_ptbxl(data_root, folds=range(1, 10), cache_dir=cache_dir)
    code_sets = {code: code_label_sets(data, data_root, code) for code in CODES}
    rhythm_values = features.rhythm(data.x)
    stats = {**features.rhythm_statistics(rhythm_values[data.folds <= 8]), "folds": list(range(1, 9))}
    rhythm_z = features.standardise(rhythm_values, stats["mean"], stats["std"])
    amp = features.lead_log_rms(data.mv) if amplitude_weights and data.mv is not None else None
    train_rows = data.folds <= 8
    baselines = {"knn_heart_rate_rr_irregularity": retrieval_metrics(rhythm_z, data, code_sets)}
    if amp is not None:
        amp_mean, amp_std = amp[train_rows].mean(0), amp[train_rows].std(0)
        amp_z_all = features.standardise(amp, amp_mean, amp_std)
        baselines["knn_lead_log_rms_mv"] = retrieval_metrics(amp_z_all, data, code_sets)
    rows: list[dict[str, Any]] = []
    for name, config_path in variants.items():
        for seed in seeds:
            out = runs / name / f"s{seed}"
            if not (out / "summary.json").is_file():
                if not train_missing:
                    raise FileNotFoundError(f"{out}: no finished run")
                train(
                    load_config(config_path).with_overrides(seed=seed),
                    data_root,
                    out,
                    device="cpu",
                    cache_dir=cache_dir,
                )
            encoder, _, ckpt = load_checkpoint(out / "best.pt")
            encoder.eval()
            base = {"variant": name, "seed": seed, "best_epoch": ckpt["state"]["best_epoch"]}
            for w in rhythm_weights:
                fn = serving_embed_fn(encoder, EncoderConfig(), stats, w)
                rows.append({**base, "rhythm_weight": w, **variant_report(fn, data, code_sets)})
            if amp is not None:
                amp_z = features.standardise(amp, amp[train_rows].mean(0), amp[train_rows].std(0))
                e = _unit(torch_embed_fn(encoder)(data.x))
                for wr in rhythm_weights:
                    for wa in amplitude_weights:
                        weights = features.block_weights([(2, wr), (12, wa)])
                        v = features.append_to_embedding(e, np.hstack([rhythm_z, amp_z]), weights)
                        rows.append(
                            {
                                **base,
                                "rhythm_weight": wr,
                                "amplitude_weight": wa,
                                **retrieval_metrics(v, data, code_sets),
                            }
                        )
    return {"baselines": baselines, "rows": rows, "summary": summarise(rows), "rhythm_statistics": stats}


def compare_irregularity(
    runs: Path,
    seeds: tuple[int, ...],
    data_root: str | Path,
    kinds: tuple[str, ...],
    rhythm_weights: tuple[float, ...],
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Fold 9 only: each RR irregularity definition (``features.rhythm``) as a kNN baseline and appended
    to the trained encoders ``runs/s<seed>/best.pt`` at each weight (P@10, AFIB/LVH P@10, shift
    stability), per seed and averaged. Chose the served definition; never reads fold 10."""
    from ecgsearch.encoder.data import load_ptbxl
    from ecgsearch.encoder.model import load_checkpoint

    data = load_ptbxl(data_root, folds=range(1, 10), cache_dir=cache_dir)
    code_sets = {code: code_label_sets(data, data_root, code) for code in CODES}
    train_rows = data.folds <= 8

    def measure(kind: str) -> EmbedFn:
        stats = features.rhythm_statistics(features.rhythm(data.x[train_rows], kind))
        return lambda x: features.standardise(features.rhythm(x, kind), stats["mean"], stats["std"])

    measured = {kind: measure(kind) for kind in kinds}
    baselines = {kind: retrieval_metrics(fn(data.x), data, code_sets) for kind, fn in measured.items()}
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        encoder, _, _ = load_checkpoint(runs / f"s{seed}" / "best.pt")
        encoder.eval()
        learned = torch_embed_fn(encoder)
        for kind, z in measured.items():
            for w in rhythm_weights:

                def embed_fn(
                    x: np.ndarray, z: EmbedFn = z, w: float = w, learned: EmbedFn = learned
                ) -> np.ndarray:
                    return features.append_to_embedding(
                        _unit(learned(x)), z(x), features.block_weights([(2, w)])
                    )

                report = variant_report(embed_fn, data, code_sets)
                rows.append({"variant": kind, "seed": seed, "rhythm_weight": w, **report})
    return {"knn_baselines": baselines, "rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each metric, per (variant, rhythm weight, amplitude weight)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r.get("rhythm_weight", 0.0), r.get("amplitude_weight")), []).append(
            r
        )
    out = []
    for (variant, wr, wa), members in groups.items():
        flat = [_flatten(m) for m in members]
        keys = [
            k
            for k in flat[0]
            if isinstance(flat[0][k], float) and k not in ("rhythm_weight", "amplitude_weight")
        ]
        entry: dict[str, Any] = {
            "variant": variant,
            "rhythm_weight": wr,
            "seeds": [m["seed"] for m in members],
        }
        if wa is not None:
            entry["amplitude_weight"] = wa
        for k in keys:
            values = np.array([f[k] for f in flat])
            entry[k] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
        out.append(entry)
    return out


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def main(argv: list[str] | None = None) -> None:
    """python -m ecgsearch.encoder.report VARIANT=CONFIG... --seeds 0 1 2 --out results/train_variants.json"""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("variants", nargs="+", help="name=path/to/config.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rhythm-weights", nargs="+", type=float, default=[0.0])
    parser.add_argument("--amplitude-weights", nargs="*", type=float, default=[])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--runs", type=Path, default=Path("runs/variants"))
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--irregularities",
        nargs="*",
        default=[],
        help="compare these RR irregularity definitions on the one variant's trained runs instead",
    )
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variants)
    if args.irregularities:
        (name,) = variants
        result = compare_irregularity(
            args.runs / name,
            tuple(args.seeds),
            args.data,
            tuple(args.irregularities),
            tuple(args.rhythm_weights),
            cache_dir=args.cache,
        )
    else:
        result = compare_variants(
            {k: Path(v) for k, v in variants.items()},
            tuple(args.seeds),
            args.data,
            args.runs,
            rhythm_weights=tuple(args.rhythm_weights),
            amplitude_weights=tuple(args.amplitude_weights),
            cache_dir=args.cache,
        )
    command = "python -m ecgsearch.encoder.report " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "protocol": PROTOCOL, **result}, indent=2) + "\n")


PROTOCOL = (
    "fold 9 only (fold 10 never read). p10_superclass_fold9: fold-9 queries, folds 1-9 searched, the "
    "fraction of the 10 nearest (cosine) sharing a superclass, same patient excluded; *_within_fold9: "
    "fold 9 searched. "
    "p10_AFIB/LVH_folds1to9: every ECG of folds 1-9 with the code as query, folds 1-9 searched, fraction "
    "of the 10 nearest (same patient excluded) with the code. shift_stability: each fold-9 ECG circularly "
    "shifted by s samples (100 Hz): mean cosine to itself unshifted, and overlap of its top-10 among the "
    "unshifted folds 1-9. Checkpoint: best.pt (best epoch by fold-9 agreement within fold 9)."
)


if __name__ == "__main__":
    main()
