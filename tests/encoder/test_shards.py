"""Prepared archives: `ecgsearch prepare` writes what ingest prepares, resumes cleanly, and training streams
from it in a seeded order that no worker count changes and resumes mid-epoch to the same weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.ecg import shards
from ecgsearch.encoder.config import EncoderConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = load_config(REPO / "configs" / "tiny.yaml")


def prepare(source: Path, out: Path, *args: str) -> tuple[int, dict]:
    command = ["prepare", str(source), "--out", str(out), "--workers", "0", "--json", *args]
    result = CliRunner().invoke(app, command)
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.fixture(scope="module")
def archive(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320 PTB-XL ECGs in shards of 64."""
    out = tmp_path_factory.mktemp("archive")
    code, summary = prepare(data_dir / "ptb-xl", out, "--shard-size", "64", "--limit", "320")
    assert code == 0 and summary["rows"] == 320 and summary["shards"] == 5
    return out


def test_archive_holds_what_ingest_prepares(archive: Path, data_dir: Path) -> None:
    from ecgsearch.ecg import ptbxl
    from ecgsearch.ingest.sources import enumerate_source, load

    opened = shards.open_archive(archive)
    assert len(opened) == 320 and [s.rows for s in opened.shards] == [64] * 5
    meta = opened.meta(2)
    first = next(c for c in enumerate_source(data_dir / "ptb-xl") if c.record_id == meta["record_id"][0])
    np.testing.assert_array_equal(opened.signals(2)[0], load(first).signal)
    rows = {f"ptbxl:{r.ecg_id}": r for r in ptbxl.read_table(data_dir / "ptb-xl")}
    folds = np.concatenate([opened.folds(i) for i in range(5)])
    ids = [rid for i in range(5) for rid in opened.meta(i)["record_id"]]
    assert list(folds) == [rows[rid].fold for rid in ids]  # PTB-XL's own strat_fold
    assert opened.rows_in([9]).sum() == sum(1 for rid in ids if rows[rid].fold == 9)
    assert meta["patient"][0].startswith("p-") and str(rows[ids[128]].patient_id) not in meta["patient"][0]
    assert set(meta["superclasses"][0]) == set(rows[ids[128]].superclasses)


def test_killed_prepare_reruns_to_the_same_archive(data_dir: Path, archive: Path, tmp_path: Path) -> None:
    from ecgsearch.ecg.identity import Pseudonymizer, read_secret
    from ecgsearch.ingest.prepare import prepare_archive

    class Killed(Exception):
        pass

    def kill_after_two(summary: object) -> None:
        if summary.shards_written == 2:
            raise Killed

    out = tmp_path / "a"
    secret = archive / "site-secret"
    with pytest.raises(Killed):
        prepare_archive(data_dir / "ptb-xl", out, Pseudonymizer(read_secret(secret)), shard_size=64,
                        workers=0, limit=320, on_shard=kill_after_two)  # fmt: skip
    # killed while the third shard was being written: its small files and a temporary signal file remain
    for suffix in (".fold.npy", ".json"):
        shutil.copy(archive / f"shard-000002{suffix}", out / f"shard-000002{suffix}")
    (out / "shard-000002.npy.tmp").write_bytes(b"\x93NUMPY partial")
    assert len(shards.open_archive(out)) == 128
    code, again = prepare(data_dir / "ptb-xl", out, "--shard-size", "64", "--limit", "320",
                          "--site-secret-file", str(secret))  # fmt: skip
    assert code == 0 and again["shards_written"] == 3 and again["rows"] == 320
    assert not list(out.glob("*.tmp"))
    for name in [f"shard-{i:06d}" for i in range(5)]:
        assert (out / f"{name}.npy").read_bytes() == (archive / f"{name}.npy").read_bytes()
        assert (out / f"{name}.json").read_text() == (archive / f"{name}.json").read_text()
    code, again = prepare(data_dir / "ptb-xl", out, "--shard-size", "64", "--limit", "320",
                          "--site-secret-file", str(secret))  # fmt: skip
    assert code == 0 and again["shards_written"] == 0  # a finished archive is left as it is
    code, _ = prepare(data_dir / "ptb-xl", out, "--shard-size", "32")
    assert code == 1  # another shard size: refused
    assert len(shards.open_archive(out)) == 320


def test_rejects_are_reported_and_the_rest_prepared(data_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "records" / "site"
    source.mkdir(parents=True)
    for name in ("HR00001", "HR00002", "HR00003"):
        for ext in (".hea", ".mat"):
            shutil.copy(data_dir / "challenge" / "ptb_xl" / f"{name}{ext}", source / f"{name}{ext}")
    (source / "HR00002.mat").write_bytes((source / "HR00002.mat").read_bytes()[:1000])  # truncated
    code, summary = prepare(tmp_path / "records", tmp_path / "out")
    assert code == 3 and summary["rows"] == 2 and summary["rejected"] == 1
    rejects = (tmp_path / "out" / "rejects.csv").read_text().splitlines()
    assert rejects[0] == "record,path,reason" and rejects[1].startswith("site:HR00002,")
    opened = shards.open_archive(tmp_path / "out")
    assert opened.meta(0)["record_id"] == ["site:HR00001", "site:HR00003"]
    assert all(1 <= f <= 10 for f in opened.folds(0))  # no PTB-XL table: folds from the patient hash
    (tmp_path / "nothing").mkdir()
    for missing in (tmp_path / "nothing", tmp_path / "absent"):
        code, _ = prepare(missing, tmp_path / f"out-{missing.name}")
        assert code == 2 and not (tmp_path / f"out-{missing.name}" / "index.json").exists()


def test_stream_order_is_seeded_whole_and_independent_of_workers(archive: Path) -> None:
    from ecgsearch.encoder.stream import ShardStream, loader, steps_per_epoch

    opened = shards.open_archive(archive)
    folds = (1, 2, 3, 4, 5, 6, 7, 8)
    n = int(opened.rows_in(folds).sum())
    assert steps_per_epoch(opened, folds, 16) == n // 16

    def order(epoch: int, **kw: int) -> list[tuple[int, int]]:
        return [
            (int(s), int(r))
            for b in shards.epoch_batches(opened, folds, 0, epoch, 16, **kw)
            for s, r in zip(*b, strict=True)
        ]

    epoch0 = order(0, block=2)
    assert len(epoch0) == len(set(epoch0)) == (n // 16) * 16  # every row at most once, full batches
    assert order(0, block=2) == epoch0 and order(1, block=2) != epoch0

    def batches(workers: int, **kw: int) -> list[np.ndarray]:
        stream = ShardStream(opened, folds, seed=0, epoch=1, global_batch=16, block=2, **kw)
        return [b.numpy() for b in loader(stream, workers)]

    single = batches(0)
    assert len(single) == n // 16
    for got in (batches(1), batches(2)):
        assert all(np.array_equal(a, b) for a, b in zip(single, got, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(single[5:], batches(2, start=5), strict=True))
    halves = [batches(2, rank=r, world=2) for r in (0, 1)]
    assert all(np.array_equal(np.concatenate([h0, h1]), s) for h0, h1, s in zip(*halves, single, strict=True))


def test_resumed_mid_epoch_equals_an_uninterrupted_run(archive: Path, data_dir: Path, tmp_path: Path) -> None:
    import torch

    from ecgsearch.encoder.train import train

    class Killed(Exception):
        pass

    def kill_at_step_8(step: int) -> None:
        if step == 8:
            raise Killed

    config = TINY.with_overrides(epochs=2)
    common = {"device": "cpu", "shards_dir": archive, "val_records": 64}
    straight = train(config, data_dir, tmp_path / "straight", workers=0, **common)
    assert straight["steps"] == 2 * (
        int(shards.open_archive(archive).rows_in(config.train_folds).sum()) // 16
    )
    with pytest.raises(Killed):  # last checkpoint at step 6, mid-epoch 0; steps 7-8 are lost
        train(
            config,
            data_dir,
            tmp_path / "resumed",
            workers=2,
            checkpoint_every=3,
            on_step=kill_at_step_8,
            **common,
        )
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert saved["step"] == 6 and saved["state"]["epoch"] == 0
    resumed = train(config, data_dir, tmp_path / "resumed", resume=True, workers=1, **common)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["steps"] == straight["steps"]
    assert [r["loss_total"] for r in resumed_history(tmp_path / "resumed")] == [
        r["loss_total"] for r in resumed_history(tmp_path / "straight")
    ]
    n_val = int(shards.open_archive(archive).rows_in([9]).sum())
    assert n_val == 58 and resumed["data"]["n_val"] == n_val  # every fold-9 ECG of the 320 (cap: 64)
    assert 0.0 <= resumed["val_agreement_last"] <= 1.0


def resumed_history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_unlabelled_archive_validates_by_loss_and_shift_stability(data_dir: Path, tmp_path: Path) -> None:
    from ecgsearch.encoder.train import train

    source = tmp_path / "records" / "site"
    source.mkdir(parents=True)
    for hea in sorted((data_dir / "challenge" / "ptb_xl").glob("*.hea")):
        for path in hea.parent.glob(hea.stem + ".*"):
            shutil.copy(path, source / path.name)
    code, summary = prepare(tmp_path / "records", tmp_path / "archive", "--shard-size", "16")
    assert code == 0 and summary["rows"] == 29
    opened = shards.open_archive(tmp_path / "archive")
    per_fold = {f: int(opened.rows_in([f]).sum()) for f in range(1, 11)}
    val_fold = max(per_fold, key=per_fold.get)  # the hash split's largest fold
    train_folds = [f for f in range(1, 11) if f != val_fold]
    config = EncoderConfig.from_dict(
        {**TINY.to_dict(), "batch_size": 8, "epochs": 1, "train_folds": train_folds, "val_fold": val_fold}
    )
    labelled = [i for i in range(len(opened.shards)) if any(opened.meta(i)["diagnoses"])]
    assert labelled  # Challenge records carry SNOMED codes: agreement on diagnoses where there are some
    for i in range(len(opened.shards)):  # strip the labels: an archive without any
        meta = opened.meta(i)
        meta["diagnoses"] = [[] for _ in meta["diagnoses"]]
        (tmp_path / "archive" / f"{opened.shards[i].name}.json").write_text(json.dumps(meta))
    result = train(
        config, data_dir, tmp_path / "run", device="cpu", shards_dir=tmp_path / "archive", workers=0
    )
    last = result["val_last"]
    assert set(last) == {"val_loss", "val_shift16_top10_overlap"}
    assert last["val_loss"] > 0 and 0.0 <= last["val_shift16_top10_overlap"] <= 1.0
    assert result["best_epoch"] == 1


def test_synthetic_archive_is_seeded_labelled_and_resumable(archive: Path, tmp_path: Path) -> None:
    from ecgsearch.encoder.synthetic import synthesise

    made = synthesise(archive, tmp_path / "a", 150, seed=1, shard_size=64)
    assert len(made) == 150 and [s.rows for s in made.shards] == [64, 64, 22]
    meta = made.meta(1)
    assert meta["record_id"][0] == "synthetic:64" and set(meta["dataset"]) == {"synthetic"}
    base = shards.open_archive(archive)
    base_meta = [base.meta(i) for i in range(5)]
    source = meta["source_row"][0]
    assert meta["patient"][0] == base_meta[source // 64]["patient"][source % 64]  # labels travel along
    assert made.folds(1)[0] == base.folds(source // 64)[source % 64]
    original = base.signals(source // 64)[source % 64]
    copy = made.signals(1)[0]
    # a circularly shifted, rescaled, noisier copy: lead II still correlates with the original's at one lag
    lag_corr = np.fft.irfft(np.fft.rfft(copy[1]) * np.conj(np.fft.rfft(original[1])), n=1000)
    assert not np.allclose(copy, original)
    assert lag_corr.max() / (np.linalg.norm(copy[1]) * np.linalg.norm(original[1])) > 0.8
    (tmp_path / "a" / "shard-000002.npy").unlink()  # a killed run: the rerun writes the rest again
    again = synthesise(archive, tmp_path / "a", 150, seed=1, shard_size=64)
    other = synthesise(archive, tmp_path / "b", 150, seed=2, shard_size=64)
    assert np.array_equal(again.signals(2), made.signals(2))
    assert not np.array_equal(other.signals(0), made.signals(0))


def test_mixed_precision_path_checkpoints_its_scaler(archive: Path, data_dir: Path, tmp_path: Path) -> None:
    """The CUDA recipe (float16 autocast + gradient scaler) runs the same code on a CPU, scaler saved."""
    import torch

    from ecgsearch.encoder.train import train

    config = TINY.with_overrides(epochs=1)
    common = {"device": "cpu", "shards_dir": archive, "val_records": 32, "workers": 0, "amp": True}
    train(config, data_dir, tmp_path, max_steps=4, **common)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["scaler"]["scale"] > 0  # a disabled scaler would save {}
    summary = train(config, data_dir, tmp_path, resume=True, **common)
    assert summary["steps"] == int(shards.open_archive(archive).rows_in(config.train_folds).sum()) // 16
    assert np.isfinite(summary["final_losses"]["total"])
