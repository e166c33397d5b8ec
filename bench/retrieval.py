"""Retrieval evaluation on PTB-XL: the trained encoder beside its random-init twin, chance and baselines.

Why so many rows from one run: an evaluation that cannot say no is no evaluation. A randomly
initialised CNN is a strong retrieval baseline; PCA of log-spectra is a shift-invariant raw-signal
baseline that needs no learning; two-number kNNs on heart rate + RR irregularity and heart rate +
age, and a kNN on per-lead log-RMS amplitudes in mV, are what a cardiologist's ruler gives for
rhythm, demographics and voltage. The encoder is worth shipping where it beats all of them.

Queries are fold 10 (all queries reported separately, labelled), the search space is every
record, and the query's own patient is never its neighbour. Nothing here is tuned on fold 10: the
probe's C is chosen on fold 9, baselines are standardised and fitted on folds 1-8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgsearch.bench.metrics import (
    binned_curve,
    bootstrap_mean,
    heart_rate,
    neighbours_excluding_patient,
    precision_at_k,
)
from ecgsearch.bench.results import relative, write_results
from ecgsearch.ecg import features, ptbxl, signals
from ecgsearch.encoder.probe import macro_auc, probe_scores, superclass_matrix
from ecgsearch.export.runtime import DEFAULT_MODEL, RANDOM_MODEL, Embedder, bundled_model, normalise_rows

NAMED_CODES = ("AFIB", "CLBBB", "CRBBB", "LVH", "IMI", "ASMI", "PACE")
AIM_CODES = ("AFIB", "LVH", "CLBBB", "CRBBB")
HANDCRAFTED = ("knn-hr-rr", "knn-hr-rr-median", "knn-hr-rmssd", "knn-lead-log-rms-mv", "knn-hr-age")
MIN_FOLD_QUERIES = 20  # below this, a code's aim is judged over all queries
TEST_FOLD, VALIDATION_FOLD = 10, 9
TRAIN_FOLDS = range(1, 9)
PROBE_CS = (0.01, 0.1, 1.0, 10.0)
SHIFTS = (4, 8, 16, 32, 50)
LATE_STARTS_500HZ = (80, 500)  # samples at 500 Hz: 0.16 s and 1 s (ecg_id 1-500 only have the file)
LATE_STARTS_100HZ = (16, 24)  # samples at 100 Hz: 0.16 s and 0.24 s, every fold-10 ECG
BOOTSTRAP = 1000
PROBE_BOOTSTRAP = 200
SEED = 0
CHANCE_DIM = 256
AIMS = {"p10_any": 0.72, "probe_auc": 0.85, "top10_overlap": 0.90, "read_overlap": 0.95, "cosine": 0.99}
LEAD_II = signals.LEADS.index("II")
HR_METHOD = "R peaks on lead II of the prepared 100 Hz signal (5-15 Hz band-pass, 250 ms refractory)"


@dataclass
class Corpus:
    """The PTB-XL records that could be read: prepared signals, the same at unit RMS, and table rows."""

    rows: list[ptbxl.PtbxlRow]
    x: np.ndarray  # (n, 12, 1000) prepared signals divided by their global RMS (as the encoder sees them)
    mv: np.ndarray  # (n, 12, 1000) prepared signals in mV (the served model's input)
    rejected: list[dict]

    @property
    def folds(self) -> np.ndarray:
        return np.array([r.fold for r in self.rows])

    @property
    def patients(self) -> list[object]:
        return [r.patient_id for r in self.rows]

    @property
    def ages(self) -> np.ndarray:
        """Age in years; NaN when unknown or PTB-XL's de-identified "over 89"."""
        return np.array(
            [r.age if r.age is not None and r.age < ptbxl.AGE_OVER_89 else np.nan for r in self.rows]
        )


def _read(raw: signals.RawEcg) -> tuple[np.ndarray, np.ndarray]:
    mv = signals.prepare(raw)
    return signals.unit_rms(mv), mv


def load_corpus(root: Path, limit: int | None = None, log: Callable[[str], None] = print) -> Corpus:
    """Every PTB-XL record of the table (100 Hz files): prepared and in mV, failures noted."""
    table = ptbxl.read_table(root)[:limit] if limit else ptbxl.read_table(root)
    rows, xs, mvs, rejected = [], [], [], []
    for i, row in enumerate(table):
        try:
            x, mv = _read(signals.read_wfdb(row.path()))
        except (signals.SignalError, OSError, ValueError, KeyError) as exc:
            rejected.append({"ecg_id": row.ecg_id, "reason": str(exc)})
            continue
        rows.append(row)
        xs.append(x)
        mvs.append(mv)
        if (i + 1) % 500 == 0:
            log(f"read {i + 1}/{len(table)} records")
    return Corpus(rows, np.stack(xs), np.stack(mvs), rejected)


# --- methods: each turns (prepared, mV, row indices) into vectors; fitted on folds 1-8 only ---


@dataclass
class Method:
    """One row of the table: how vectors are made, and how neighbours are ranked."""

    name: str
    vectors: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None
    euclidean: bool
    meta: dict
    fixed: np.ndarray | None = None  # vectors not derived from the signal (chance)
    shift_rows: str = "all"  # "fold10": a slow method's shift checks move only the fold-10 ECGs

    def embed(self, x: np.ndarray, mv: np.ndarray, idx: np.ndarray) -> np.ndarray:
        if self.vectors is None:
            assert self.fixed is not None
            return self.fixed[idx]
        return self.vectors(x, mv, idx)


def embed(model: Path, mv: np.ndarray, batch: int = 256) -> tuple[np.ndarray, dict]:
    """Unit embeddings of prepared signals (mV) and the model card summary (also used by ``bench recall``)."""
    method = onnx_method("model", model, batch)
    return method.embed(mv, mv, np.arange(len(mv))), method.meta


def onnx_method(name: str, model: Path, batch: int = 256) -> Method:
    embedder = Embedder(model)
    card = embedder.card

    def run(_x: np.ndarray, mv: np.ndarray, _idx: np.ndarray) -> np.ndarray:
        return np.concatenate([embedder.embed(mv[i : i + batch]) for i in range(0, len(mv), batch)])

    meta = {
        "path": relative(model),
        "version": card.version,
        "initialisation": card.initialisation,
        "embedding_dim": card.embedding_dim,
        "name": card.name,
        "labelled_folds": labelled_folds(card.training),
    }
    return Method(name, run, False, meta)


def labelled_folds(training: dict) -> list[int]:
    """The folds whose diagnoses trained a model (none for a self-supervised or random one): their
    queries judge nothing of it."""
    config = training.get("config") or {}
    if training.get("note") or not (config.get("w_label", 0) > 0 or config.get("w_statement", 0) > 0):
        return []
    return sorted(int(f) for f in config.get("train_folds", ()))


def log_spectra(x: np.ndarray) -> np.ndarray:
    """(n, 12, T) -> (n, 12 * (T // 2 + 1)) log power spectra: blind to where the window starts."""
    power = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64), axis=2)) ** 2
    return np.log(power + 1e-6).reshape(len(x), -1)


def pca_method(
    name: str,
    transform: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    fit: np.ndarray,
    dim: int,
    what: str,
) -> Method:
    """PCA of ``transform(prepared)`` fitted on the training folds; unit rows, cosine."""
    from sklearn.decomposition import PCA

    flat = transform(x[fit])
    dim = min(dim, int(fit.sum()) - 1, flat.shape[1])
    pca = PCA(n_components=dim, random_state=SEED).fit(flat)
    meta = {
        "input": what,
        "dim": dim,
        "fit_rows": int(fit.sum()),
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
    }
    return Method(name, lambda xx, _mv, _i: normalise_rows(pca.transform(transform(xx))), False, meta)


def _zscore_method(
    name: str,
    measure: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    corpus: Corpus,
    fit: np.ndarray,
    what: str,
) -> Method:
    """A kNN (Euclidean) on z-scored measurements, mean and std from the training folds."""
    all_rows = np.arange(len(corpus.rows))
    values = measure(corpus.x, corpus.mv, all_rows)
    mean, std = np.nanmean(values[fit], axis=0), np.nanstd(values[fit], axis=0)
    folds = ",".join(str(f) for f in np.unique(corpus.folds[fit]))
    meta = {
        "features": what,
        "metric": f"euclidean on z-scores (folds {folds} mean/std, clipped at 5, missing = 0)",
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    return Method(name, lambda x, mv, idx: features.standardise(measure(x, mv, idx), mean, std), True, meta)


def methods_for(corpus: Corpus, model: Path, random_model: Path, pca_dim: int | None) -> list[Method]:
    """The trained model, its random-init twin, chance, the baselines and the installed peers, in table
    order (``peers.installed`` says which peers are missing)."""
    from ecgsearch.bench import peers

    fit = np.isin(corpus.folds, list(TRAIN_FOLDS))
    trained = onnx_method("trained", model)
    rand = onnx_method("random-init", random_model)
    dim = pca_dim or trained.meta["embedding_dim"]
    rng = np.random.default_rng(SEED)
    chance = Method(
        "chance",
        None,
        False,
        {"vectors": f"Gaussian, {CHANCE_DIM}-d, seed {SEED}"},
        normalise_rows(rng.standard_normal((len(corpus.rows), CHANCE_DIM))),
    )
    peer = peers.openecg_method(corpus)
    return [trained, rand, chance, *baseline_methods(corpus, fit, dim), *([peer] if peer else [])]


def baseline_methods(corpus: Corpus, fit: np.ndarray, dim: int) -> list[Method]:
    """The baselines that need no learning beyond PCA and z-scores, fitted on the rows ``fit``."""
    return [
        pca_method(
            "pca-log-spectra",
            log_spectra,
            corpus.x,
            fit,
            dim,
            "log power spectrum per lead of the prepared signal",
        ),
        pca_method(
            "pca-raw",
            lambda x: np.asarray(x).reshape(len(x), -1),
            corpus.x,
            fit,
            dim,
            "prepared samples (shift-sensitive)",
        ),
        *knn_methods(corpus, fit),
    ]


def knn_methods(corpus: Corpus, fit: np.ndarray) -> list[Method]:
    """The kNN baselines on z-scored measurements (mean and std from the rows ``fit``)."""
    ages = corpus.ages
    return [
        _zscore_method(
            "knn-hr-rr",
            lambda x, _mv, _i: features.rhythm(x),
            corpus,
            fit,
            "heart rate, trimmed RR irregularity (lead II R peaks, encoder.features.rhythm, as served)",
        ),
        _zscore_method(
            "knn-hr-rr-median",
            lambda x, _mv, _i: features.rhythm(x, "median"),
            corpus,
            fit,
            "heart rate, median |successive RR difference| / median RR",
        ),
        _zscore_method(
            "knn-hr-rmssd",
            lambda x, _mv, _i: features.rhythm(x, "rmssd"),
            corpus,
            fit,
            "heart rate, RMSSD / mean RR",
        ),
        _zscore_method(
            "knn-lead-log-rms-mv",
            lambda _x, mv, _i: features.lead_log_rms(mv),
            corpus,
            fit,
            "log RMS per lead in mV before normalisation (12)",
        ),
        _zscore_method(
            "knn-hr-age",
            lambda x, _mv, idx: np.column_stack([features.rhythm(x)[:, 0], ages[idx]]),
            corpus,
            fit,
            "heart rate (encoder.features.rhythm) and age",
        ),
    ]


# --- metrics of one method ---


def _interval(values: np.ndarray, scale: float = 1.0) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    mean, low, high = bootstrap_mean(v, BOOTSTRAP, SEED)
    return {"value": mean * scale, "ci95": [low * scale, high * scale], "n": int(len(v))}


def per_query(nbrs: np.ndarray, corpus: Corpus) -> dict[str, np.ndarray]:
    """Per row as a query: fraction of its neighbours sharing a superclass, with the same set, per code."""
    labels = [r.superclasses for r in corpus.rows]
    n = len(labels)
    any_sc = np.full(n, np.nan)
    same_set = np.full(n, np.nan)
    for i in range(n):
        if labels[i]:
            any_sc[i] = np.mean([bool(labels[i] & labels[j]) for j in nbrs[i]])
            same_set[i] = np.mean([labels[i] == labels[j] for j in nbrs[i]])
    out = {"p10_any_superclass": any_sc, "p10_same_superclass_set": same_set}
    for code in NAMED_CODES:
        has = np.array([code in r.scp_codes for r in corpus.rows])
        score = np.full(n, np.nan)
        score[has] = has[nbrs[has]].mean(axis=1)
        out[code] = score
    return out


def code_table(
    scores: dict[str, np.ndarray], corpus: Corpus, queries: np.ndarray, nbrs: np.ndarray
) -> list[dict]:
    rows = []
    for code in NAMED_CODES:
        has = np.array([code in r.scp_codes for r in corpus.rows])
        base = precision_at_k(has, nbrs[queries], queries)["base_rate"]
        p = _interval(scores[code][queries])
        enrichment = [v / base if base > 0 else float("nan") for v in (p["value"], *p["ci95"])]
        rows.append(
            {
                "code": code,
                "queries": p["n"],
                "base_rate": base,
                "p10": p["value"],
                "p10_ci95": p["ci95"],
                "enrichment": enrichment[0],
                "enrichment_ci95": enrichment[1:],
            }
        )
    return rows


def probe(emb: np.ndarray, corpus: Corpus) -> dict:
    """Superclass probe on folds 1-8; C chosen on fold 9; macro-AUC on fold 10 with a bootstrap interval."""
    folds = corpus.folds
    y = superclass_matrix([r.superclasses for r in corpus.rows])
    train = np.isin(folds, list(TRAIN_FOLDS))
    by_c = {c: probe_scores(emb, y, train, c) for c in PROBE_CS}
    val = {c: macro_auc(s, y, folds == VALIDATION_FOLD)[0] for c, s in by_c.items()}
    best = max(val, key=lambda c: -np.inf if np.isnan(val[c]) else val[c])
    test = np.flatnonzero(folds == TEST_FOLD)
    auc, per_class = macro_auc(by_c[best], y, test)
    rng = np.random.default_rng(SEED)
    boots = np.asarray(
        [macro_auc(by_c[best], y, rng.choice(test, len(test)))[0] for _ in range(PROBE_BOOTSTRAP)]
    )
    boots = boots[np.isfinite(boots)]
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if len(boots) else [None, None]
    return {
        "C_chosen_on_fold9": best,
        "fold9_macro_auc_by_C": {str(c): v for c, v in val.items()},
        "fold10_macro_auc": auc,
        "fold10_macro_auc_ci95": ci,
        "fold10_auc_per_superclass": per_class,
        "train_rows": int(train.sum()),
        "test_rows": len(test),
    }


def _similarity(q: np.ndarray, base: np.ndarray, euclidean: bool) -> np.ndarray:
    if euclidean:
        return 2 * q @ base.T - (base**2).sum(axis=1)[None, :] - (q**2).sum(axis=1)[:, None]
    return q @ base.T


def _pairwise_self(a: np.ndarray, b: np.ndarray, euclidean: bool) -> np.ndarray:
    """Similarity of each row of ``a`` to the same row of ``b`` (cosine, or minus squared distance)."""
    return -((a - b) ** 2).sum(axis=1) if euclidean else (a * b).sum(axis=1)


def shift_stability(
    method: Method, corpus: Corpus, base: np.ndarray, nbrs: np.ndarray, k: int, later: dict[str, dict]
) -> dict:
    """Cosine of each ECG to itself moved, and how many of its k neighbours stay.

    Moves: circular shifts; later starts (``later``: name -> ``load_later_starts``), compared with the
    same file read from its start; and the 500 Hz file's read compared with the 100 Hz file's (the
    corpus). Neighbours of the moved ECG are searched among the unshifted collection (own patient
    excluded) and compared with the unmoved ECG's. Summaries: fold-10 queries and all moved records
    (a method with ``shift_rows="fold10"`` moves only the fold-10 ECGs: no "all" summary).
    """
    if method.vectors is None:
        return {"note": "chance vectors do not depend on the signal"}
    folds = corpus.folds
    rows = np.arange(len(corpus.rows))
    out: dict = {"circular": {}}
    if method.shift_rows != "all":
        rows = np.flatnonzero(folds == TEST_FOLD)
        out["rows"] = "fold 10 only (a slow method)"
    for s in SHIFTS:
        moved = method.embed(np.roll(corpus.x[rows], s, axis=2), np.roll(corpus.mv[rows], s, axis=2), rows)
        out["circular"][str(s)] = _stability(method, corpus, base, nbrs, moved, rows, k, folds)
    for name, views in later.items():
        keep = np.isin(views["idx"], rows)
        idx, x, mv = views["idx"][keep], views["x"][:, keep], views["mv"][:, keep]
        start = method.embed(x[0], mv[0], idx)
        start_nbrs = _neighbours(method, corpus, base, start, idx, k)
        out[name] = {
            f"{drop / views['fs']:g}s": _stability(
                method, corpus, base, start_nbrs, method.embed(x[j], mv[j], idx), idx, k, folds, start
            )
            for j, drop in enumerate(views["drops"], start=1)
        }
        if views["fs"] != signals.MODEL_FS:  # the same ECG from its other file against the corpus's read
            out[f"read_{views['fs']}hz_vs_100hz"] = _stability(
                method, corpus, base, nbrs, start, idx, k, folds
            )
    return out


def _neighbours(
    method: Method, corpus: Corpus, base: np.ndarray, q: np.ndarray, idx: np.ndarray, k: int
) -> np.ndarray:
    pid = _patient_codes(corpus.patients)
    sims = _similarity(q, base, method.euclidean)
    sims[pid[idx][:, None] == pid[None, :]] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _stability(
    method: Method,
    corpus: Corpus,
    base: np.ndarray,
    before: np.ndarray,
    moved: np.ndarray,
    idx: np.ndarray,
    k: int,
    folds: np.ndarray,
    reference: np.ndarray | None = None,
) -> dict:
    after = _neighbours(method, corpus, base, moved, idx, k)
    ref = base[idx] if reference is None else reference
    sim = _pairwise_self(moved, ref, method.euclidean)
    overlap = np.array(
        [
            len(set(a) & set(b)) / k
            for a, b in zip(before if reference is not None else before[idx], after, strict=True)
        ]
    )
    test = folds[idx] == TEST_FOLD
    key = "cosine" if not method.euclidean else "minus_squared_distance"
    out = {"fold10": {key: _interval(sim[test]), "top10_overlap": _interval(overlap[test])}}
    if method.shift_rows == "all":
        out["all"] = {key: _interval(sim), "top10_overlap": _interval(overlap)}
    return out


def _patient_codes(patients: list[object]) -> np.ndarray:
    codes: dict = {}
    return np.array(
        [
            codes.setdefault(("p", p) if p is not None else ("r", i), len(codes))
            for i, p in enumerate(patients)
        ]
    )


def spearman(method: Method, emb: np.ndarray, corpus: Corpus, hr: np.ndarray) -> dict:
    """Spearman of similarity with |Δ heart rate| and |Δ age| over fold-10 query x other-patient pairs."""
    from scipy.stats import spearmanr

    queries = np.flatnonzero(corpus.folds == TEST_FOLD)
    pid = _patient_codes(corpus.patients)
    sims = _similarity(emb[queries], emb, method.euclidean)
    other = pid[queries][:, None] != pid[None, :]
    age = corpus.ages
    out: dict[str, Any] = {}
    for name, v in (("abs_delta_heart_rate", hr), ("abs_delta_age", age)):
        d = np.abs(v[queries][:, None] - v[None, :])[other]
        s = sims[other]
        ok = np.isfinite(d) & np.isfinite(s)
        out[name] = {
            "rho": float(spearmanr(s[ok], d[ok]).statistic) if ok.sum() > 2 else float("nan"),
            "pairs": int(ok.sum()),
        }
        out[f"curve_{name}"] = binned_curve(s, d)
    return out


def evaluate_method(method: Method, corpus: Corpus, hr: np.ndarray, k: int, later: dict[str, dict]) -> dict:
    everyone = np.arange(len(corpus.rows))
    emb = method.embed(corpus.x, corpus.mv, everyone)
    nbrs, _ = neighbours_excluding_patient(emb, corpus.patients, k, everyone, euclidean=method.euclidean)
    scores = per_query(nbrs, corpus)
    test = np.flatnonzero(corpus.folds == TEST_FOLD)
    val = np.flatnonzero(corpus.folds == VALIDATION_FOLD)
    out: dict[str, Any] = {
        "method": method.name,
        "meta": method.meta,
        "metric": "euclidean" if method.euclidean else "cosine",
    }
    for scope, q in (("fold10", test), ("all_queries", everyone)):
        out[scope] = {
            "p10_any_superclass": _interval(scores["p10_any_superclass"][q]),
            "p10_same_superclass_set": _interval(scores["p10_same_superclass_set"][q]),
            "codes": code_table(scores, corpus, q, nbrs),
        }
    out["fold9_p10_any_superclass"] = (
        float(np.nanmean(scores["p10_any_superclass"][val])) if len(val) else None
    )
    out["linear_probe"] = probe(emb, corpus)
    out["shift_stability"] = shift_stability(method, corpus, emb, nbrs, k, later)
    out["similarity_vs_difference"] = spearman(method, emb, corpus, hr)
    return out


def load_later_starts(
    corpus: Corpus,
    fs: int,
    drops: tuple[int, ...],
    log: Callable[[str], None],
    rows: np.ndarray | None = None,
) -> dict | None:
    """The rows' records read again from their ``fs`` file (rows without one skipped), prepared (and mV)
    from the start and with the first ``drops`` samples dropped: the remainder is prepared as any 8-10 s
    recording is, zero-padded at the end to 10 s, then high-passed. None when no row has the file."""
    idx, xs, mvs = [], [], []
    for i in range(len(corpus.rows)) if rows is None else rows:
        row = corpus.rows[i]
        path = row.path(prefer_hr=fs != signals.MODEL_FS)
        if fs != signals.MODEL_FS and path == row.path():
            continue
        try:
            raw = signals.read_wfdb(path)
            views = [_read(raw)] + [_read(raw.starting_at(n)) for n in drops]
        except (signals.SignalError, OSError, ValueError, KeyError) as exc:
            log(f"ptbxl:{row.ecg_id}: {fs} Hz file left out ({exc})")
            continue
        idx.append(i)
        xs.append([v[0] for v in views])
        mvs.append([v[1] for v in views])
    if not idx:
        return None
    return {
        "idx": np.array(idx),
        "fs": fs,
        "drops": drops,
        "x": np.stack(xs, axis=1),
        "mv": np.stack(mvs, axis=1),
    }


def judge(methods: list[dict]) -> list[dict]:
    """The issue's aims on point estimates, each with its interval and the margin (value - target)."""
    by = {m["method"]: m for m in methods}
    t = by["trained"]
    aims = []

    def add(name: str, value: float, target: float, ci: list, scope: str, note: str = "") -> None:
        aims.append(
            {
                "aim": name,
                "value": value,
                "target": target,
                "ci95": ci,
                "margin": value - target,
                "met": bool(value >= target),
                "scope": scope,
                **({"note": note} if note else {}),
            }
        )

    p = t["fold10"]["p10_any_superclass"]
    add(f"P@10 any superclass >= {AIMS['p10_any']:.2f}", p["value"], AIMS["p10_any"], p["ci95"], "fold 10")
    lp = t["linear_probe"]
    add(
        "probe macro-AUC >= 0.85",
        lp["fold10_macro_auc"],
        AIMS["probe_auc"],
        lp["fold10_macro_auc_ci95"],
        "fold 10",
    )
    saw_labels = bool(t["meta"].get("labelled_folds"))
    for code in AIM_CODES:
        row10 = next(r for r in t["fold10"]["codes"] if r["code"] == code)
        scope = "fold10" if row10["queries"] >= MIN_FOLD_QUERIES or saw_labels else "all_queries"
        mine = next(r for r in t[scope]["codes"] if r["code"] == code)
        rivals = [(next(r for r in by[h][scope]["codes"] if r["code"] == code), h) for h in HANDCRAFTED]
        best, best_name = max(rivals, key=lambda pair: np.nan_to_num(pair[0]["p10"], nan=-np.inf))
        label = "fold 10"
        if saw_labels and row10["queries"] < MIN_FOLD_QUERIES:
            label = (
                f"fold 10, {row10['queries']} queries: the encoder learned the other folds' labels, so only "
                "fold 10 may judge it (per code with every ECG a query: eval crossfit)"
            )
        elif scope != "fold10":
            label = (
                f"all folds' queries (fold 10 has {row10['queries']} < {MIN_FOLD_QUERIES}; "
                "the encoder never sees labels)"
            )
        low, high = best["p10_ci95"]
        add(
            f"{code} P@10 above the best handcrafted baseline",
            mine["p10"],
            best["p10"],
            mine["p10_ci95"],
            label,
            f"best handcrafted: {best_name} {best['p10']:.3f} [{low:.3f}, {high:.3f}]",
        )
        aims[-1]["met"] = bool(mine["p10"] > best["p10"])
    stab = t["shift_stability"]
    overlap = AIMS["top10_overlap"]
    shifts = {f"circular {s}": (v["fold10"], overlap) for s, v in stab["circular"].items()}
    for fs in (500, 100):
        later = stab.get(f"later_start_{fs}hz", {})
        shifts |= {f"start {s} later ({fs} Hz)": (v["fold10"], overlap) for s, v in later.items()}
    if "read_500hz_vs_100hz" in stab:
        shifts["500 Hz vs 100 Hz read"] = (stab["read_500hz_vs_100hz"]["fold10"], AIMS["read_overlap"])
    for name, (v, target) in shifts.items():
        add(
            f"top-10 overlap >= {target:.2f}, {name}",
            v["top10_overlap"]["value"],
            target,
            v["top10_overlap"]["ci95"],
            "fold 10",
        )
        add(f"cosine >= 0.99, {name}", v["cosine"]["value"], AIMS["cosine"], v["cosine"]["ci95"], "fold 10")
    return aims


PROTOCOL = {
    "queries": f"fold {TEST_FOLD}; 'all_queries' repeats every number with every record as a query",
    "search_space": "every record",
    "same_patient_excluded": True,
    "p10_any_superclass": "share of the k nearest sharing a superclass; queries without one skipped",
    "p10_same_superclass_set": "share of the k nearest whose superclass set equals the query's",
    "code_p10": (
        "for queries carrying the SCP code (any likelihood): share of the k nearest carrying it; "
        "enrichment = that / the code's base rate over all records"
    ),
    "intervals": (
        f"bootstrap 95% over queries, {BOOTSTRAP} resamples, seed {SEED} "
        f"(probe: {PROBE_BOOTSTRAP} resamples of the fold-10 rows)"
    ),
    "probe": f"one-vs-rest logistic regression on folds 1-8, C in {list(PROBE_CS)} chosen on fold 9",
    "baselines": "fitted and standardised on folds 1-8; kNN baselines rank by Euclidean distance of z-scores",
    "shift": (
        f"circular shifts by {list(SHIFTS)} samples at 100 Hz of every record; 500 Hz records started "
        f"{[n / 500 for n in LATE_STARTS_500HZ]} s later and fold-{TEST_FOLD} 100 Hz records "
        f"{[n / 100 for n in LATE_STARTS_100HZ]} s later (samples dropped, the remainder prepared: "
        "zero-padded at the end to 10 s, then high-passed), each compared with its file read from the "
        "start; the 500 Hz read compared with the 100 Hz read (the corpus); neighbours among the "
        "unshifted collection, own patient excluded"
    ),
    "similarity_vs_difference": (
        "Spearman of similarity with |difference| over fold-10 query x other-patient pairs; "
        "ages 'over 89' left out"
    ),
    "heart_rate": HR_METHOD,
    "tuning": "nothing is chosen on fold 10",
}


def run(
    root: Path,
    *,
    k: int = 10,
    model: Path | None = None,
    random_model: Path | None = None,
    pca_dim: int | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The whole evaluation; returns the results dict that ``write`` saves."""
    t0 = time.perf_counter()
    corpus = load_corpus(root, limit, log)
    log(f"prepared {len(corpus.rows)} records ({len(corpus.rejected)} rejected)")
    test = np.flatnonzero(corpus.folds == TEST_FOLD)
    found = {
        "later_start_500hz": load_later_starts(corpus, 500, LATE_STARTS_500HZ, log),
        "later_start_100hz": load_later_starts(corpus, signals.MODEL_FS, LATE_STARTS_100HZ, log, test),
    }
    later = {name: views for name, views in found.items() if views is not None}
    hr500, late100 = later.get("later_start_500hz"), later.get("later_start_100hz")
    hr = np.array([heart_rate(x[LEAD_II], signals.MODEL_FS) or np.nan for x in corpus.x])
    from ecgsearch.bench import peers

    methods = methods_for(
        corpus, model or bundled_model(DEFAULT_MODEL), random_model or bundled_model(RANDOM_MODEL), pca_dim
    )
    results = []
    for m in methods:
        results.append(evaluate_method(m, corpus, hr, k, later))
        log(_line(results[-1]) + f" ({time.perf_counter() - t0:.0f} s)")
    folds = corpus.folds
    return {
        "evaluation": "retrieval",
        "dataset": {
            "root": relative(root),
            "records": len(corpus.rows),
            "rejected": corpus.rejected,
            "limit": limit,
            "fold_sizes": {int(f): int((folds == f).sum()) for f in np.unique(folds)},
            "patients": len({str(p) for p in corpus.patients}),
            "records_500hz": 0 if hr500 is None else len(hr500["idx"]),
            "records_500hz_fold10": 0 if hr500 is None else int((folds[hr500["idx"]] == TEST_FOLD).sum()),
            "records_100hz_later_start_fold10": 0 if late100 is None else len(late100["idx"]),
        },
        "protocol": {"k": k, **PROTOCOL},
        "heart_rate": {
            "valid": int(np.isfinite(hr).sum()),
            "of": len(hr),
            "median_bpm": float(np.nanmedian(hr)) if np.isfinite(hr).any() else None,
        },
        "methods": results,
        "peers": peers.installed(),
        "aims": judge(results),
        "wall_s": time.perf_counter() - t0,
    }


def _line(m: dict) -> str:
    p = m["fold10"]["p10_any_superclass"]
    low, high = p["ci95"]
    auc = m["linear_probe"]["fold10_macro_auc"]
    return f"{m['method']:<20} P@10 fold10={p['value']:.3f} [{low:.3f}, {high:.3f}] probe AUC={auc:.3f}"


def write(result: dict, out: Path, plot_path: Path | None) -> None:
    write_results(out, result)
    if plot_path:
        plot(result, plot_path)


def plot(result: dict, path: Path) -> None:
    """P@10 with intervals per method, the aim codes against the handcrafted baselines, shift stability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["methods"]
    names = [m["method"] for m in methods]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    xs = np.arange(len(names))
    for off, key in ((-0.2, "p10_any_superclass"), (0.2, "p10_same_superclass_set")):
        vals = [m["fold10"][key]["value"] for m in methods]
        err = np.array(
            [
                [v - m["fold10"][key]["ci95"][0], m["fold10"][key]["ci95"][1] - v]
                for v, m in zip(vals, methods, strict=True)
            ]
        ).T
        axes[0].bar(
            xs + off, vals, 0.4, yerr=err, capsize=2, label=key.replace("p10_", "P@10 ").replace("_", " ")
        )
    for x, m in zip(xs, methods, strict=True):
        axes[0].text(x, 0.02, f"AUC\n{m['linear_probe']['fold10_macro_auc']:.2f}", ha="center", fontsize=7)
    axes[0].axhline(AIMS["p10_any"], color="k", lw=0.8, ls="--")
    axes[0].set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
    axes[0].set_title("fold 10: P@10 (95% CI) and probe macro-AUC")
    axes[0].legend(fontsize=7)
    shown = [m for m in methods if m["method"] in ("trained", "random-init", *HANDCRAFTED)]
    cx = np.arange(len(AIM_CODES))
    width = 0.8 / len(shown)
    trained = next(m for m in methods if m["method"] == "trained")
    scope = "fold10" if trained["meta"].get("labelled_folds") else "all_queries"
    for j, m in enumerate(shown):
        rows = {r["code"]: r for r in m[scope]["codes"]}
        axes[1].bar(
            cx + j * width - 0.4 + width / 2, [rows[c]["p10"] for c in AIM_CODES], width, label=m["method"]
        )
    axes[1].set_xticks(cx, AIM_CODES)
    axes[1].set_title(
        "code P@10, fold 10 (the encoder learned folds 1-9's labels)"
        if scope == "fold10"
        else "code P@10, all queries (the encoder never sees labels)"
    )
    axes[1].legend(fontsize=7)
    for m in methods:
        stab = m["shift_stability"].get("circular")
        if not stab:
            continue
        axes[2].plot(
            [int(s) for s in stab],
            [v["fold10"]["top10_overlap"]["value"] for v in stab.values()],
            "o-",
            label=m["method"],
        )
    axes[2].axhline(AIMS["top10_overlap"], color="k", lw=0.8, ls="--")
    axes[2].set_xlabel("circular shift (samples at 100 Hz)")
    axes[2].set_ylabel("top-10 overlap with unshifted")
    axes[2].set_title("shift stability, fold 10")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
