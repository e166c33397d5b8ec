"""Cross-fitted retrieval evaluation: every labelled PTB-XL ECG judged by a model that never saw it.

Once labels train the encoder, a query may only be judged by a model that saw neither its signal nor
its labels. The ten strat folds are split into groups (default 5 groups of 2 folds); for each group one
model trains on the other folds, embeds every ECG, and answers the queries of its group only. Pooled over
the groups, every ECG is a held-out query once.

Protocol, as ``bench.retrieval`` (same per-query scoring): the search space is every record, embedded
by the query's own model (the training ECGs included, as a served archive holds them); the query's own
patient is never its neighbour; queries without a superclass are skipped for P@10 any superclass; a
code's P@10 is over the queries carrying it. The handcrafted baselines (PCA of log spectra and of the
raw samples, kNN on heart rate + RR irregularity, per-lead log-RMS and heart rate + age) and the
random-init twin answer the same queries, each fitted (PCA, z-scores, the served rhythm block's
statistics) on the query's training folds only. Every difference trained - other has a paired bootstrap
interval over the same queries. A second view searches only the held-out group (every neighbour unseen
too).

Settings are fixed before the run (the config file), or, with ``nested``, chosen inside each group's
training folds only: an inner model trains on those folds less the last one, and the served blocks'
settings (the statement block's kind and weight, the rhythm block's weight) are picked from a fixed
grid by an inner score on that last fold's queries, searching the training folds' records. The group's
model then trains on all its folds and serves the settings picked, so no reported query influenced any choice.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecgsearch.bench.metrics import bootstrap_mean, neighbours_excluding_patient
from ecgsearch.bench.results import load_average, machine, relative
from ecgsearch.bench.retrieval import (
    AIM_CODES,
    BOOTSTRAP,
    HANDCRAFTED,
    NAMED_CODES,
    SEED,
    Corpus,
    baseline_methods,
    knn_methods,
    per_query,
)
from ecgsearch.ecg import ptbxl
from ecgsearch.encoder.config import (
    SERVED_ONLY,
    STATEMENT_BLOCKS,
    STATEMENT_HEADS,
    WHITENING_SCOPES,
    EncoderConfig,
    training_settings,
)
from ecgsearch.encoder.data import EcgArrays, load_ptbxl
from ecgsearch.export.runtime import normalise_rows, waveform_split_error

if TYPE_CHECKING:  # torch only where a model is loaded
    from ecgsearch.encoder.model import Encoder

FOLDS = tuple(range(1, 11))
CROSSFIT_CODES = ("AFIB", "LVH", "CLBBB", "CRBBB", "IMI", "ASMI")
AIM_P10 = 0.72
CODE_AIMS = ("AFIB", "CLBBB", "CRBBB", "ASMI")  # at or above the best handcrafted kNN baseline
KNN_BASELINES = ("knn-hr-rr", "knn-lead-log-rms-mv", "knn-hr-age")  # the "handcrafted kNN"
# the nested choice: served-block weights tried on the inner fold, fixed before any run; ties go to the
# earlier (lighter) setting
STATEMENT_HEADS_TRIED: tuple[str, ...] = STATEMENT_HEADS  # the trained head first: a tie keeps it
STATEMENT_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
RHYTHM_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5)
GRID: dict[str, tuple] = {
    "statement_block": STATEMENT_BLOCKS,
    "statement_weight": STATEMENT_WEIGHTS,
    "rhythm_weight": RHYTHM_WEIGHTS,
    "statement_head": STATEMENT_HEADS_TRIED,
}
INNER_SCORE = (
    "mean of (P@10 any superclass, the mean code P@10 over the cross-fitted codes with an inner query) on "
    "the inner fold's queries, searching the group's training records, own patient excluded"
)
AIMS_FIRST = (
    "the number of aim codes (CODE_AIMS) whose inner-fold P@10 is at or above the best handcrafted kNN's "
    "(KNN_BASELINES) on the same inner queries (fitted on the inner training folds), plus P@10 any "
    "superclass"
)
# how the nested choice ranks the settings it tries: the field of a tried setting each rule maximises
RULES = {"inner-score": INNER_SCORE, "aims-first": AIMS_FIRST}
RULE_KEY = {"inner-score": "score", "aims-first": "aims_first"}


def fold_groups(n_groups: int) -> list[tuple[int, ...]]:
    """The ten strat folds in ``n_groups`` consecutive groups of equal size: 2 -> (1-5), (6-10) ..."""
    if n_groups < 2 or len(FOLDS) % n_groups:
        raise ValueError(f"groups must divide the 10 folds and be at least 2, not {n_groups}")
    size = len(FOLDS) // n_groups
    return [FOLDS[i : i + size] for i in range(0, len(FOLDS), size)]


def group_of(folds: np.ndarray, groups: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Index of each row's held-out group; a fold in no group is an error."""
    out = np.full(len(folds), -1)
    for g, members in enumerate(groups):
        out[np.isin(folds, list(members))] = g
    if (out < 0).any():
        raise ValueError(f"folds {sorted(set(folds[out < 0].tolist()))} are in no group")
    return out


def training_config(config: EncoderConfig, held_out: Sequence[int], threads: int) -> EncoderConfig:
    """The config of a held-out group's model: every other fold trains; one pass over its validation
    split at the end (the last of its training folds), and the last epoch is the model: no selection."""
    train_folds = tuple(f for f in FOLDS if f not in held_out)
    return config.with_overrides(
        train_folds=train_folds, val_fold=train_folds[-1], eval_every=config.epochs, threads=threads
    )


@dataclass
class GroupModel:
    """One held-out group: its folds, the rows it may train on, and what its models make of every ECG."""

    folds: tuple[int, ...]
    train_rows: np.ndarray  # indices into the corpus
    vectors: dict[str, np.ndarray]  # method -> (n, d) vectors of every ECG
    euclidean: dict[str, bool]
    summary: dict


def train_group(
    config: EncoderConfig,
    data: EcgArrays,
    held_out: tuple[int, ...],
    scratch: Path,
    threads: int,
    label: str,
    log: Callable[[str], None],
    root: Path,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train ``config`` on the folds outside ``held_out`` and embed every ECG with what would be served;
    also the random-init twin (same seed's initial weights, same served blocks, its own whitening).
    ``root`` holds ptb-xl/ (a whitening rereads the files). (trained, random, info)."""
    import torch

    from ecgsearch.encoder.train import embed
    from ecgsearch.export.onnx import random_encoder, serving_module

    cfg = training_config(config, held_out, threads)
    train_rows = np.isin(data.folds, cfg.train_folds)
    if np.isin(data.folds[train_rows], held_out).any():  # the guard this whole evaluation rests on
        raise AssertionError("a held-out fold reached training")
    train_arrays = data.select(train_rows)
    val_arrays = train_arrays.in_folds([cfg.val_fold])
    out = scratch / f"{label}-heldout-{'-'.join(map(str, held_out))}"
    t0 = time.perf_counter()
    summary = train_once(cfg, out, threads, (train_arrays, val_arrays))
    encoder, cfg = load_trained(out, cfg)
    dev = torch.device("cpu")
    assert data.mv is not None
    served, _ = serving_module(encoder, cfg, root, train=train_arrays)
    trained = embed(served, data.mv, dev)
    twin, _ = serving_module(random_encoder(cfg), cfg, root, train=train_arrays)
    rand = embed(twin, data.mv, dev)
    info = {
        "train_folds": list(cfg.train_folds),
        "held_out_folds": list(held_out),
        "train_ecgs": int(train_rows.sum()),
        "epochs": summary["epochs"],
        "train_seconds": summary["throughput"]["train_seconds"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "final_losses": summary["final_losses"],
        "labelled_train": summary["data"].get("labelled_train"),
        "statement_vocabulary": list(cfg.statement_vocabulary),
        "served": {key: getattr(cfg, key) for key in GRID},
        "whitening": cfg.whitening,
    }
    log(f"{label} held out {held_out}: trained on {info['train_ecgs']} ECGs in {info['wall_s']:.0f} s")
    return _unit(trained), _unit(rand), info


def served_blocks(encoder: object, config: EncoderConfig, train: EcgArrays, mv: np.ndarray) -> dict:
    """The served vector's blocks at weight 1, each ECG of ``mv``: the unit conv embedding, the rhythm
    block (z / sqrt 2) and, with a statement head, each kind of statement block (GRID). ``compose``
    weighs them as serving would."""
    import torch

    from ecgsearch.encoder.train import embed
    from ecgsearch.export.onnx import serving_module

    d = config.embedding_dim
    blocks: dict[str, np.ndarray] = {}
    head = bool(config.statement_vocabulary)
    for statement_head in STATEMENT_HEADS_TRIED if head else STATEMENT_HEADS_TRIED[:1]:
        for kind in STATEMENT_BLOCKS if head else STATEMENT_BLOCKS[:1]:
            full = config.with_overrides(
                rhythm_weight=1.0,
                amplitude_weight=0.0,
                statement_weight=float(head),
                statement_block=kind,
                statement_head=statement_head,
                whitening=0.0,  # compose weighs the blocks; no whitening is fitted here
            )
            served, _ = serving_module(encoder, full, "", train=train)  # type: ignore[arg-type]
            v = embed(served, mv, torch.device("cpu")).astype(np.float64)
            blocks |= {
                "embedding": v[:, :d],
                "rhythm": v[:, d : d + 2],
                block_key(kind, statement_head): v[:, d + 2 :],
            }
    return blocks


def block_key(statement_block: str, statement_head: str) -> str:
    """The key of ``served_blocks`` holding that statement block."""
    trained = statement_head == STATEMENT_HEADS_TRIED[0]
    return statement_block if trained else f"{statement_head}/{statement_block}"


def compose(
    blocks: dict,
    statement_weight: float,
    rhythm_weight: float,
    statement_block: str = "probabilities",
    statement_head: str = STATEMENT_HEADS_TRIED[0],
) -> np.ndarray:
    """Unit vectors [embedding | rhythm_weight * rhythm | statement_weight * statement block]: what the
    model served with those settings gives (the runtime L2-normalises)."""
    parts = [blocks["embedding"], rhythm_weight * blocks["rhythm"]]
    if statement_weight > 0:
        parts.append(statement_weight * blocks[block_key(statement_block, statement_head)])
    return _unit(np.concatenate(parts, axis=1))


def grid_settings(head: bool) -> list[dict]:
    """GRID's settings in order, lighter first (a tie goes to the earlier); a model without a statement
    head has no statement block, and a block of weight 0 is one setting whatever its kind. Only the
    settings the runtime can serve with named views (``export.runtime.waveform_split_error``: not a
    statement block beside the rhythm block), so a choice never picks what cannot ship. The refitted
    head (``encoder.refit_head``) comes after every setting of the trained one."""
    return [
        {"statement_block": kind, "statement_weight": sw, "rhythm_weight": rw, "statement_head": sh}
        for sh in (STATEMENT_HEADS_TRIED if head else STATEMENT_HEADS_TRIED[:1])
        for kind in (STATEMENT_BLOCKS if head else STATEMENT_BLOCKS[:1])
        for sw in (STATEMENT_WEIGHTS if head else (0.0,))
        if (sw > 0 or kind == STATEMENT_BLOCKS[0]) and (sw > 0 or sh == STATEMENT_HEADS_TRIED[0])
        for rw in RHYTHM_WEIGHTS
        if waveform_split_error(rw > 0, sw > 0, False) is None
    ]


def inner_score(
    vectors: np.ndarray, corpus: Corpus, queries: np.ndarray, k: int, euclidean: bool = False
) -> dict:
    """INNER_SCORE of ``vectors`` (rows of ``corpus``): every row searched, ``queries`` asking."""
    top, _ = neighbours_excluding_patient(vectors, corpus.patients, k, queries, euclidean=euclidean)
    nbrs = np.zeros((len(corpus.rows), k), dtype=int)
    nbrs[queries] = top
    scores = per_query(nbrs, corpus)
    asked = np.zeros(len(corpus.rows), dtype=bool)
    asked[queries] = True
    p10 = float(np.nanmean(np.where(asked, scores["p10_any_superclass"], np.nan)))
    codes = {
        c: float(np.nanmean(np.where(asked, scores[c], np.nan)))
        for c in CROSSFIT_CODES
        if np.isfinite(np.where(asked, scores[c], np.nan)).any()
    }
    code_mean = float(np.mean(list(codes.values()))) if codes else p10  # no code asked: P@10 alone
    return {"score": 0.5 * p10 + 0.5 * code_mean, "p10_any": p10, "codes": codes}


def aims_first(scored: dict, rivals: dict[str, float]) -> float:
    """AIMS_FIRST of one setting's inner figures: aims met on the inner fold first, P@10 to break ties."""
    met = sum(scored["codes"][c] >= rivals[c] for c in CODE_AIMS if c in scored["codes"] and c in rivals)
    return float(met) + scored["p10_any"]


def inner_rivals(sub: Corpus, fit: np.ndarray, queries: np.ndarray, k: int) -> dict[str, float]:
    """Per code, the best handcrafted kNN's P@10 on the inner queries (KNN_BASELINES fitted on ``fit``)."""
    best: dict[str, float] = {}
    for method in knn_methods(sub, fit):
        if method.name in KNN_BASELINES:
            v = method.embed(sub.x, sub.mv, np.arange(len(sub.rows)))
            for code, value in inner_score(v, sub, queries, k, method.euclidean)["codes"].items():
                best[code] = max(best.get(code, -1.0), value)
    return best


def nested_choice(
    config: EncoderConfig,
    data: EcgArrays,
    corpus: Corpus,
    held_out: tuple[int, ...],
    scratch: Path,
    threads: int,
    k: int,
    log: Callable[[str], None],
    whiten: bool = False,
    rule: str = "inner-score",
) -> tuple[EncoderConfig, dict]:
    """Pick the served weights of ``held_out``'s model inside its training folds only (GRID, by ``rule``
    of RULES).

    The inner model trains on the training folds less the last, which asks the queries; the search
    space is the training folds' records. ``whiten``: then the whitening's shrinkage on the same inner
    model, serving the weights picked (``bench.whitening_choice``). Returns the config with the
    settings picked, and the record.
    """
    outer = [f for f in FOLDS if f not in held_out]
    inner_fold = outer[-1]
    cfg = training_config(config, (*held_out, inner_fold), threads)
    rows = np.flatnonzero(np.isin(data.folds, outer))  # never a held-out row
    if np.isin(data.folds[rows], held_out).any():
        raise AssertionError("a held-out fold reached the nested choice")
    inner_train = data.select(np.isin(data.folds, cfg.train_folds))
    out = scratch / f"inner-heldout-{'-'.join(map(str, held_out))}"
    t0 = time.perf_counter()
    train_once(cfg, out, threads, (inner_train, inner_train.in_folds([cfg.val_fold])))
    encoder, trained_cfg = load_trained(out, cfg)
    assert data.mv is not None
    blocks = served_blocks(encoder, trained_cfg, inner_train, data.mv[rows])
    sub = Corpus([corpus.rows[i] for i in rows], corpus.x[rows], corpus.mv[rows], [])
    queries = np.flatnonzero(data.folds[rows] == inner_fold)
    tried = [
        {**s, **inner_score(compose(blocks, **s), sub, queries, k)}
        for s in grid_settings(bool(trained_cfg.statement_vocabulary))
    ]
    rivals = None
    if rule == "aims-first":
        rivals = inner_rivals(sub, np.isin(data.folds[rows], cfg.train_folds), queries, k)
        for t in tried:
            t["aims_first"] = aims_first(t, rivals)
    best = max(tried, key=lambda t: t[RULE_KEY[rule]])  # the first of equals: the lighter setting
    chosen = {key: best[key] for key in GRID}
    whitening = None
    if whiten:
        from ecgsearch.bench import whitening_choice

        chosen["whitening"], whitening = whitening_choice.choose(
            encoder, trained_cfg.with_overrides(**chosen), data, corpus, inner_fold, k, log
        )
    record = {
        "inner_train_folds": list(cfg.train_folds),
        "inner_fold": inner_fold,
        "inner_queries": int(len(queries)),
        "search_space": int(len(rows)),
        "rule": rule,
        **({"inner_rivals": rivals} if rivals is not None else {}),
        "chosen": chosen,
        "tried": tried,
        **({"whitening": whitening} if whitening is not None else {}),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    log(f"held out {held_out}: inner fold {inner_fold} picks {chosen} ({rule} {best[RULE_KEY[rule]]:.3f})")
    return config.with_overrides(**chosen), record


def choose_for_shipping(
    root: Path,
    config: EncoderConfig,
    held_out: tuple[int, ...],
    *,
    threads: int = 1,
    k: int = 10,
    limit: int | None = None,
    cache_dir: Path | None = None,
    work: Path | None = None,
    whiten: bool = False,
    rule: str = "inner-score",
    log: Callable[[str], None] = print,
) -> tuple[EncoderConfig, dict]:
    """The shipped model's config: its served settings picked as ``nested_choice`` picks each group's,
    inside the folds outside ``held_out`` (which the model then trains on, as ``training_config`` says).
    ``whiten``: then the whitening's shrinkage too, on the same inner model (``bench.whitening_choice``).
    Returns the config to train and the record of the choice; ``held_out`` stays unseen for its report."""
    import torch

    torch.set_num_threads(threads)
    data = load_ptbxl(root, max_records=limit, cache_dir=cache_dir)
    corpus = corpus_of(data, root / "ptb-xl")
    with tempfile.TemporaryDirectory(prefix="choose-") as scratch:
        folder = Path(scratch if work is None else work)
        chosen, record = nested_choice(config, data, corpus, held_out, folder, threads, k, log, whiten, rule)
    return training_config(chosen, held_out, threads), {
        "held_out_folds": list(held_out),
        "grid": GRID,
        "rule": RULES[rule],
        **record,
    }


def served_settings(card_features: dict | None) -> dict:
    """The served blocks' settings a model card records (what ``compose`` and the export take)."""
    f = card_features or {}
    statements = f.get("statements") or {}
    whitened = f.get("whitening") or {}
    return {
        "rhythm_weight": float((f.get("rhythm") or {}).get("weight", 0.0)),
        "amplitude_weight": float((f.get("amplitude") or {}).get("weight", 0.0)),
        "statement_weight": float(statements.get("weight", 0.0)),
        "statement_block": str(statements.get("block", "probabilities")),
        "statement_head": str(statements.get("head", STATEMENT_HEADS_TRIED[0])),
        "whitening": float(whitened.get("shrink", 0.0)),
        "whitening_scope": str(whitened.get("scope", WHITENING_SCOPES[0])),  # older cards: the whole vector
    }


def group_model(
    work: Path, label: str, held_out: tuple[int, ...], how: str = "", data: EcgArrays | None = None
) -> tuple[Encoder, EncoderConfig]:
    """The model ``eval crossfit --work`` left for ``held_out`` (``label``: trained or inner), and its
    config; refused when missing (``how``: the eval crossfit options that train it), when it trained
    on a held-out fold, or (given ``data``) when it trained on another number of ECGs than ``data``
    holds in its training folds (another --limit)."""
    from ecgsearch.encoder.model import load_checkpoint
    from ecgsearch.encoder.train import LAST

    path = work / f"{label}-heldout-{'-'.join(map(str, held_out))}" / LAST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no model with folds {list(held_out)} held out; train them with "
            f"`ecgsearch eval crossfit {how + ' ' if how else ''}--work {work}`"
        )
    encoder, cfg, ckpt = load_checkpoint(path)
    if set(cfg.train_folds) & set(held_out):  # the guard the judgement rests on
        raise AssertionError(
            f"{path} trained on held-out folds {sorted(set(cfg.train_folds) & set(held_out))}"
        )
    trained_on = ((ckpt.get("summary") or {}).get("data") or {}).get("n_train")
    if data is not None and trained_on is not None:
        here = int(np.isin(data.folds, cfg.train_folds).sum())
        if here != trained_on:
            raise ValueError(
                f"{path} trained on {trained_on} ECGs; its folds hold {here} here (another --limit?)"
            )
    return encoder, cfg


def group_vectors(
    work: Path, groups: Sequence[tuple[int, ...]], data: EcgArrays, settings: dict, root: Path
) -> list[np.ndarray]:
    """Every ECG's served vector from each held-out group's model in ``work`` (``eval crossfit --work``),
    served with ``settings``: a shipped model's recipe judged with every query answered by a model that
    saw neither its signal nor its labels."""
    import torch

    from ecgsearch.encoder.train import embed
    from ecgsearch.export.onnx import serving_module

    out = []
    assert data.mv is not None
    for held_out in groups:
        encoder, cfg = group_model(work, "trained", held_out, f"--groups {len(groups)}")
        served, _ = serving_module(
            encoder,
            cfg.with_overrides(**settings),
            root,  # a whitening rereads the training folds' files
            train=data.select(np.isin(data.folds, cfg.train_folds)),
        )
        out.append(_unit(embed(served, data.mv, torch.device("cpu"))))
    return out


def train_once(config: EncoderConfig, out: Path, threads: int, arrays: tuple[EcgArrays, EcgArrays]) -> dict:
    """Train ``config`` into ``out``, or reuse the finished training already there when its training
    settings are this one's (training is deterministic per seed and threads, so it is the model this run
    would train: a cross-fit can be split over processes sharing ``--work``, and a run with other served
    settings reuses it; load it with ``load_trained``). The run summary."""
    from ecgsearch.encoder.train import train

    wanted = training_settings(config.to_dict())
    _claim(out, wanted)
    done = out / "summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        if training_settings(summary["config"]) == wanted:
            return summary
    return train(config, "", out, device="cpu", threads=threads, arrays=arrays)


def load_trained(out: Path, config: EncoderConfig) -> tuple[Encoder, EncoderConfig]:
    """The network ``train_once`` left in ``out``, and its config with ``config``'s served settings: the
    training may have been made, and reused, under others. The vocabulary is the checkpoint's own."""
    from ecgsearch.encoder.model import load_checkpoint
    from ecgsearch.encoder.train import LAST

    encoder, trained, _ = load_checkpoint(out / LAST)
    return encoder, trained.with_overrides(**{k: getattr(config, k) for k in SERVED_ONLY})


CLAIM = "claimed_by.json"


def _claim(out: Path, config: dict) -> None:
    """Mark ``out`` as this config's training folder, or refuse one that another config claimed.

    Training writes ``last.pt`` every epoch and the evaluation reads it back, so two configs training
    into one folder (runs of different configs sharing ``--work``) would each read the other's weights.
    The claim is written whole, then linked into place: of two processes starting at once one claims,
    and the other reads a complete claim."""
    out.mkdir(parents=True, exist_ok=True)
    claim = out / CLAIM
    with tempfile.NamedTemporaryFile("w", dir=out, suffix=".tmp", delete=False) as f:
        json.dump(config, f, sort_keys=True)
    try:
        os.link(f.name, claim)
        return
    except FileExistsError:
        saved = json.loads(claim.read_text())
    finally:
        os.unlink(f.name)
    if saved != config:
        differ = sorted(k for k in config.keys() | saved.keys() if config.get(k) != saved.get(k))
        raise ValueError(
            f"{out} holds the training of another config (differs in {', '.join(differ[:5])}); "
            "give this run its own --work, or delete that folder to retrain it"
        )


def _unit(v: np.ndarray) -> np.ndarray:
    return normalise_rows(v, np.float64)


def corpus_of(data: EcgArrays, root: Path) -> Corpus:
    """The retrieval evaluation's Corpus view of loaded PTB-XL arrays (rows in the same order)."""
    by_id = {r.ecg_id: r for r in ptbxl.read_table(root)}
    assert data.mv is not None
    return Corpus([by_id[int(i)] for i in data.ecg_ids], data.x, data.mv, [])


def crossfit_neighbours(
    vectors: Sequence[np.ndarray],
    euclidean: bool,
    group: np.ndarray,
    patients: list[object],
    k: int,
    within_group: bool = False,
) -> np.ndarray:
    """(n, k) neighbours of every row, each row answered by its own group's vectors ``vectors[g]``.

    The search space is every row (or, ``within_group``, the rows of the query's group only); the
    query's own patient is left out.
    """
    n = len(group)
    nbrs = np.full((n, k), -1)
    for g, emb in enumerate(vectors):
        queries = np.flatnonzero(group == g)
        if not len(queries):
            continue
        if within_group:
            local = [patients[i] for i in queries]
            top, _ = neighbours_excluding_patient(
                emb[queries], local, k, np.arange(len(queries)), euclidean=euclidean
            )
            nbrs[queries] = queries[top]
        else:
            top, _ = neighbours_excluding_patient(emb, patients, k, queries, euclidean=euclidean)
            nbrs[queries] = top
    return nbrs


def _interval(values: np.ndarray) -> dict:
    mean, low, high = bootstrap_mean(values, BOOTSTRAP, SEED)
    return {"value": mean, "ci95": [low, high], "n": int(np.isfinite(values).sum())}


def summarise(scores: dict[str, np.ndarray], corpus: Corpus) -> dict:
    """Pooled P@10 any superclass and per-code P@10 (queries, base rate, interval)."""
    out = {"p10_any_superclass": _interval(scores["p10_any_superclass"]), "codes": {}}
    for code in CROSSFIT_CODES:
        has = np.array([code in r.scp_codes for r in corpus.rows])
        out["codes"][code] = {**_interval(scores[code]), "base_rate": float(has.mean())}
    return out


def difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b over the queries both answer, with a paired bootstrap 95% interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return _interval(d)


def run(
    root: Path,
    config: EncoderConfig,
    *,
    config_path: Path | None = None,
    compare: EncoderConfig | None = None,
    compare_path: Path | None = None,
    n_groups: int = 5,
    k: int = 10,
    nested: bool = False,
    whiten: bool = False,
    rule: str = "inner-score",
    compare_name: str = "self-supervised",
    threads: int = 1,
    limit: int | None = None,
    cache_dir: Path | None = None,
    work: Path | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one model per held-out group (and one of ``compare`` per group), embed, score; the results.

    ``root`` holds ``ptb-xl/``; ``limit`` keeps the first N ECGs (smoke runs, tests); ``work`` keeps
    the trained models (else a temporary folder) and reuses those already finished there (``train_once``).
    """
    import torch

    torch.set_num_threads(threads)
    started_on = machine(torch=torch.__version__, threads=threads)
    t0 = time.perf_counter()
    groups = fold_groups(n_groups)
    data = load_ptbxl(root, max_records=limit, cache_dir=cache_dir)
    corpus = corpus_of(data, root / "ptb-xl")
    group = group_of(data.folds, groups)
    log(f"prepared {len(data)} ECGs; groups {groups}")
    configs = {"trained": config, **({compare_name: compare} if compare is not None else {})}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in (*configs, "random-init")}
    euclidean: dict[str, bool] = {name: False for name in vectors}
    training: dict[str, list[dict]] = {name: [] for name in configs}
    choices: list[dict] = []
    dim = 0
    with tempfile.TemporaryDirectory(prefix="crossfit-") as scratch:
        tmp = scratch if work is None else str(work)
        for held_out in groups:
            for name, cfg in configs.items():
                if nested and name == "trained":
                    cfg, choice = nested_choice(
                        cfg, data, corpus, held_out, Path(tmp), threads, k, log, whiten, rule
                    )
                    choices.append({"held_out_folds": list(held_out), **choice})
                trained, rand, info = train_group(cfg, data, held_out, Path(tmp), threads, name, log, root)
                vectors[name].append(trained)
                training[name].append(info)
                if name == "trained":
                    vectors["random-init"].append(rand)
                    dim = cfg.embedding_dim
    for held_out in groups:
        fit = ~np.isin(data.folds, held_out)
        for method in baseline_methods(corpus, fit, dim):
            vectors.setdefault(method.name, []).append(
                method.embed(corpus.x, corpus.mv, np.arange(len(corpus.rows)))
            )
            euclidean[method.name] = method.euclidean
    log(f"embedded with {len(vectors)} methods ({time.perf_counter() - t0:.0f} s)")
    views = {}
    for view, within in (("all_records", False), ("within_group", True)):
        scores = {}
        for name, v in vectors.items():
            nbrs = crossfit_neighbours(v, euclidean[name], group, corpus.patients, k, within)
            scores[name] = per_query(nbrs, corpus)
        views[view] = _view(scores, corpus, group, groups)
    result = {
        "evaluation": "retrieval, cross-fitted",
        "dataset": {
            "root": relative(root),
            "records": len(data),
            "limit": limit,
            "labelled_queries": int(sum(1 for r in corpus.rows if r.superclasses)),
            "groups": [list(g) for g in groups],
            "group_sizes": [int((group == g).sum()) for g in range(len(groups))],
        },
        "protocol": {"k": k, **PROTOCOL},
        "config": _config_entry(config, config_path),
        **(
            {"nested_choice": {"grid": GRID, "rule": rule, "ranks_by": RULES[rule], "groups": choices}}
            if nested
            else {}
        ),
        **({"compare_config": _config_entry(compare, compare_path)} if compare is not None else {}),
        "training": training,
        "threads": threads,
        "views": views,
        "aims": judge(views["all_records"]),
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {**started_on, "load_avg_at_end": load_average()},
        **({"command": command} if command else {}),
    }
    log(line(result))
    return result


def _config_entry(config: EncoderConfig, path: Path | None) -> dict:
    return {"path": relative(path) if path else None, **config.to_dict()}


def _view(scores: dict[str, dict[str, np.ndarray]], corpus: Corpus, group: np.ndarray, groups: list) -> dict:
    """Per method: pooled figures, fold-10 figures, per group P@10; differences trained - every other."""
    fold10 = corpus.folds == 10
    methods = {}
    for name, s in scores.items():
        methods[name] = {
            "pooled": summarise(s, corpus),
            "fold10": summarise({key: np.where(fold10, v, np.nan) for key, v in s.items()}, corpus),
            "per_group_p10_any": [
                float(np.nanmean(s["p10_any_superclass"][group == g])) for g in range(len(groups))
            ],
        }
    mine = scores["trained"]
    diffs = {}
    for name, s in scores.items():
        if name == "trained":
            continue
        diffs[name] = {
            "p10_any_superclass": difference(mine["p10_any_superclass"], s["p10_any_superclass"]),
            "codes": {code: difference(mine[code], s[code]) for code in CROSSFIT_CODES},
        }
    return {"methods": methods, "trained_minus": diffs}


def judge(view: dict) -> list[dict]:
    """The issue's cross-fitted aims on point estimates, with intervals and the rival named."""
    methods, diffs = view["methods"], view["trained_minus"]
    p = methods["trained"]["pooled"]["p10_any_superclass"]
    aims = [
        {
            "aim": f"pooled P@10 any superclass >= {AIM_P10}",
            "value": p["value"],
            "ci95": p["ci95"],
            "target": AIM_P10,
            "met": bool(p["value"] >= AIM_P10),
        }
    ]
    for code in CROSSFIT_CODES:
        mine = methods["trained"]["pooled"]["codes"][code]
        rivals = {h: methods[h]["pooled"]["codes"][code]["value"] for h in KNN_BASELINES if h in methods}
        best = max(rivals, key=lambda h: np.nan_to_num(rivals[h], nan=-np.inf))
        row = {
            "aim": f"{code} P@10 at or above the best handcrafted kNN",
            "value": mine["value"],
            "ci95": mine["ci95"],
            "queries": mine["n"],
            "best_handcrafted": best,
            "target": rivals[best],
            "difference": diffs[best]["codes"][code],
            "met": bool(mine["value"] >= rivals[best]),
            "is_aim": code in CODE_AIMS,
        }
        if code == "CLBBB" and "pca-log-spectra" in methods:
            row["pca_log_spectra"] = methods["pca-log-spectra"]["pooled"]["codes"][code]["value"]
            row["difference_pca_log_spectra"] = diffs["pca-log-spectra"]["codes"][code]
        aims.append(row)
    return aims


def line(result: dict) -> str:
    """One summary line: pooled P@10 of the trained model, the twin, and the aims met."""
    m = result["views"]["all_records"]["methods"]
    p, r = m["trained"]["pooled"]["p10_any_superclass"], m["random-init"]["pooled"]["p10_any_superclass"]
    met = sum(a["met"] for a in result["aims"] if a.get("is_aim", True))
    total = sum(1 for a in result["aims"] if a.get("is_aim", True))
    return (
        f"cross-fitted P@10 any superclass {p['value']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] "
        f"(random-init {r['value']:.3f}); aims met {met}/{total}"
    )


PROTOCOL = {
    "crossfit": (
        "the 10 strat folds in consecutive groups; per group one model trains on the other folds (settings "
        "fixed by the config file, the last epoch kept, no selection) and answers that group's queries only; "
        "every ECG is a query once, judged by a model that saw neither its signal nor its labels"
    ),
    "search_space": (
        "all_records: every record, embedded by the query's own model (its training ECGs included, as a "
        "served archive holds them); within_group: only the records of the query's held-out group"
    ),
    "same_patient_excluded": True,
    "p10_any_superclass": "share of the k nearest sharing a superclass; queries without one skipped",
    "code_p10": "for queries carrying the SCP code (any likelihood): share of the k nearest carrying it",
    "baselines": (
        "PCA and z-score statistics, and the served rhythm block's statistics, fitted on the query's "
        "training folds; the random-init twin is the same seed's initial weights behind the same blocks"
    ),
    "intervals": f"bootstrap 95% over queries, {BOOTSTRAP} resamples, seed {SEED}; differences paired",
    "handcrafted_knn_for_aims": list(KNN_BASELINES),
    "all_handcrafted": list(HANDCRAFTED),
    "codes_reported_elsewhere": [c for c in NAMED_CODES if c not in CROSSFIT_CODES],
    "aim_codes_of_the_fold10_evaluation": list(AIM_CODES),
}
