"""Retrieval evaluation on PTB-XL: the trained encoder beside a random-init twin and a PCA baseline.

Why three methods from one run: a randomly initialised CNN is a surprisingly strong retrieval
baseline, and PCA of the raw samples shows what needs no learning at all; a score means little
without both. Queries are fold 10 (fold 9 reported too, since settings were chosen on it), the
search space is every record, and the query's own patient is never its neighbour.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgsearch.bench.metrics import binned_curve, heart_rate, neighbours_excluding_patient, precision_at_k
from ecgsearch.bench.results import relative, write_results
from ecgsearch.encoder import ptbxl, signals
from ecgsearch.encoder.data import prepare_rows
from ecgsearch.encoder.probe import macro_auc, probe_scores, superclass_matrix
from ecgsearch.encoder.retrieval import neighbour_agreement
from ecgsearch.export.runtime import DEFAULT_MODEL, RANDOM_MODEL, Embedder, bundled_model, normalise_rows

NAMED_CODES = ("AFIB", "CRBBB", "CLBBB", "LVH", "IMI", "PACE", "WPW")
MIN_QUERIES = 10
TEST_FOLD, VALIDATION_FOLD = 10, 9
TRAIN_FOLDS = range(1, 9)
PROBE_CS = (0.01, 0.1, 1.0, 10.0)
LEAD_II = signals.LEADS.index("II")
HR_METHOD = "R peaks on lead II of the prepared 100 Hz signal (5-15 Hz band-pass, 250 ms refractory)"


@dataclass
class Corpus:
    """The prepared PTB-XL records that could be read, with their table rows."""

    rows: list[ptbxl.PtbxlRow]
    x: np.ndarray  # (n, 12, 1000) prepared signals
    rejected: list[dict]

    @property
    def folds(self) -> np.ndarray:
        return np.array([r.fold for r in self.rows])

    @property
    def patients(self) -> list[object]:
        return [r.patient_id for r in self.rows]


def load_corpus(root: Path, limit: int | None = None, log: Callable[[str], None] = print) -> Corpus:
    """Every PTB-XL record of the table (100 Hz files) prepared by ``encoder.data``, failures noted."""
    table = ptbxl.read_table(root)[:limit] if limit else ptbxl.read_table(root)
    x, rejected = prepare_rows(table, log=log)
    keep = np.isfinite(x).all(axis=(1, 2))
    return Corpus([r for r, k in zip(table, keep, strict=True) if k], x[keep], rejected)


def embed(model: Path, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, dict]:
    """Unit embeddings of prepared signals and the model card summary."""
    embedder = Embedder(model)
    out = np.concatenate([embedder.embed(x[i : i + batch]) for i in range(0, len(x), batch)])
    card = embedder.card
    return out, {
        "path": relative(model),
        "version": card.version,
        "initialisation": card.initialisation,
        "embedding_dim": card.embedding_dim,
        "name": card.name,
    }


def pca_embed(x: np.ndarray, fit_rows: np.ndarray, dim: int) -> tuple[np.ndarray, dict]:
    """PCA of the flattened prepared samples, fitted on the training folds only; unit rows."""
    from sklearn.decomposition import PCA

    flat = x.reshape(len(x), -1)
    dim = min(dim, int(fit_rows.sum()) - 1, flat.shape[1])
    pca = PCA(n_components=dim, random_state=0).fit(flat[fit_rows])
    return normalise_rows(pca.transform(flat)), {
        "dim": dim,
        "fit_rows": int(fit_rows.sum()),
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
    }


def linear_probe(emb: np.ndarray, rows: list[ptbxl.PtbxlRow], folds: np.ndarray) -> dict:
    """Superclass probe on folds 1-8; C chosen on fold 9, macro-AUC on fold 10 (``encoder.probe``)."""
    y = superclass_matrix([r.superclasses for r in rows])
    train = np.isin(folds, list(TRAIN_FOLDS))
    by_c = {c: probe_scores(emb, y, train, c) for c in PROBE_CS}
    val = {c: macro_auc(s, y, folds == VALIDATION_FOLD)[0] for c, s in by_c.items()}
    best = max(val, key=lambda c: -np.inf if np.isnan(val[c]) else val[c])
    test_auc, per_class = macro_auc(by_c[best], y, folds == TEST_FOLD)
    return {
        "C_chosen_on_fold9": best,
        "fold9_macro_auc_by_C": {str(c): v for c, v in val.items()},
        "fold10_macro_auc": test_auc,
        "fold10_auc_per_superclass": per_class,
        "train_rows": int(train.sum()),
        "test_rows": int((folds == TEST_FOLD).sum()),
    }


def diagnosis_table(emb: np.ndarray, corpus: Corpus, query_idx: np.ndarray, k: int) -> list[dict]:
    """Precision@k and enrichment per SCP code with >= MIN_QUERIES queries, plus the named codes always."""
    nbrs, _ = neighbours_excluding_patient(emb, corpus.patients, k, query_idx)
    codes = sorted({c for r in corpus.rows for c in r.scp_codes} | set(NAMED_CODES))
    table = []
    for code in codes:
        has = np.array([code in r.scp_codes for r in corpus.rows])
        row = {"code": code, "named": code in NAMED_CODES, "in_search_space": int(has.sum())}
        row |= precision_at_k(has, nbrs, query_idx)
        if not has.any():
            row["note"] = "absent from this data set: no query, no number"
        if row["queries"] >= MIN_QUERIES or code in NAMED_CODES:
            table.append(row)
    return sorted(table, key=lambda r: (not r["named"], -r["queries"], r["code"]))


def similarity_curves(emb: np.ndarray, corpus: Corpus, query_idx: np.ndarray, hr: np.ndarray) -> dict:
    """Mean |age difference| and |heart-rate difference| per cosine-similarity decile.

    Pairs: each query with every record of another patient. Ages of 300 (PTB-XL's "over 89") and
    records without a valid heart rate are left out of the respective curve.
    """
    pid = np.array([str(p) for p in corpus.patients])
    age = np.array(
        [r.age if r.age is not None and r.age < ptbxl.AGE_OVER_89 else np.nan for r in corpus.rows]
    )
    sims = emb[query_idx] @ emb.T
    other = pid[query_idx][:, None] != pid[None, :]
    s = sims[other]
    d_age = np.abs(age[query_idx][:, None] - age[None, :])[other]
    d_hr = np.abs(hr[query_idx][:, None] - hr[None, :])[other]
    return {"age": binned_curve(s, d_age), "heart_rate": binned_curve(s, d_hr), "pairs": int(other.sum())}


def evaluate_method(name: str, emb: np.ndarray, corpus: Corpus, hr: np.ndarray, k: int, meta: dict) -> dict:
    """Every number of one method."""
    folds = corpus.folds
    labels = [r.superclasses for r in corpus.rows]
    test = np.flatnonzero(folds == TEST_FOLD)
    everyone = np.arange(len(corpus.rows))
    out = {"method": name, "meta": meta}
    for fold in (TEST_FOLD, VALIDATION_FOLD):
        mask = folds == fold
        out[f"agreement@{k}_fold{fold}"] = neighbour_agreement(
            emb, labels, corpus.patients, k=k, query_mask=mask
        )
        out[f"fold{fold}_queries_with_superclass"] = int(sum(mask[i] and bool(labels[i]) for i in everyone))
    out["linear_probe"] = linear_probe(emb, corpus.rows, folds)
    out["diagnoses_fold10"] = diagnosis_table(emb, corpus, test, k)
    out["diagnoses_all_queries"] = diagnosis_table(emb, corpus, everyone, k)
    out["curves_fold10"] = similarity_curves(emb, corpus, test, hr)
    return out


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
    hr = np.array([heart_rate(x[LEAD_II], signals.MODEL_FS) or np.nan for x in corpus.x])
    trained, trained_meta = embed(model or bundled_model(DEFAULT_MODEL), corpus.x)
    rand, rand_meta = embed(random_model or bundled_model(RANDOM_MODEL), corpus.x)
    dim = pca_dim or trained.shape[1]
    pca, pca_meta = pca_embed(corpus.x, np.isin(corpus.folds, list(TRAIN_FOLDS)), dim)
    log(f"embedded with three methods in {time.perf_counter() - t0:.1f} s")
    methods = []
    for name, emb, meta in (
        ("trained", trained, trained_meta),
        ("random-init", rand, rand_meta),
        ("pca", pca, pca_meta),
    ):
        methods.append(evaluate_method(name, emb, corpus, hr, k, meta))
        log(_line(methods[-1], k))
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
        },
        "protocol": {
            "k": k,
            "queries": f"fold {TEST_FOLD} (fold {VALIDATION_FOLD} reported separately)",
            "search_space": "every record",
            "same_patient_excluded": True,
            "agreement": "fraction of the k nearest sharing a superclass; queries with none skipped",
            "probe": f"one-vs-rest logistic regression on folds 1-8, C in {list(PROBE_CS)} chosen on fold 9",
            "min_queries_per_code": MIN_QUERIES,
            "heart_rate": HR_METHOD,
        },
        "heart_rate": {
            "valid": int(np.isfinite(hr).sum()),
            "of": len(hr),
            "median_bpm": float(np.nanmedian(hr)) if np.isfinite(hr).any() else None,
        },
        "methods": methods,
        "wall_s": time.perf_counter() - t0,
    }


def _line(m: dict, k: int) -> str:
    return (
        f"{m['method']:<12} agreement@{k} fold10={m[f'agreement@{k}_fold10']:.3f} "
        f"fold9={m[f'agreement@{k}_fold9']:.3f} probe AUC={m['linear_probe']['fold10_macro_auc']:.3f}"
    )


def write(result: dict, out: Path, plot_path: Path | None) -> None:
    write_results(out, result)
    if plot_path:
        plot(result, plot_path)


def plot(result: dict, path: Path) -> None:
    """Agreement and probe bars per method, and the similarity-vs-difference curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result["protocol"]["k"]
    methods = result["methods"]
    names = [m["method"] for m in methods]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    xs = np.arange(len(names))
    for offset, fold in ((-0.2, 10), (0.2, 9)):
        axes[0].bar(xs + offset, [m[f"agreement@{k}_fold{fold}"] for m in methods], 0.4, label=f"fold {fold}")
    for x, m in zip(xs, methods, strict=True):
        axes[0].text(x, 0.02, f"AUC {m['linear_probe']['fold10_macro_auc']:.2f}", ha="center", fontsize=8)
    axes[0].set_xticks(xs, names)
    axes[0].set_ylabel(f"superclass agreement@{k}")
    axes[0].set_title("agreement (bars) and probe macro-AUC (text)")
    axes[0].legend(fontsize=8)
    for ax, key, label in (
        (axes[1], "age", "|age difference| (years)"),
        (axes[2], "heart_rate", "|HR diff| (bpm)"),
    ):
        for m in methods:
            curve = m["curves_fold10"][key]
            ax.plot(
                [c["similarity_mean"] for c in curve],
                [c["abs_difference_mean"] for c in curve],
                "o-",
                label=m["method"],
            )
        ax.set_xlabel("cosine similarity (decile mean)")
        ax.set_ylabel(label)
        ax.set_title(f"fold-10 queries: mean {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
