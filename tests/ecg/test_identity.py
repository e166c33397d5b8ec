"""The identity scheme on real records: ids from the dataset, content hashes, keyed pseudonyms, secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgsearch.ecg import signals
from ecgsearch.ecg.identity import (
    Pseudonymizer,
    SecretError,
    content_hash,
    default_secret,
    read_secret,
    site_pseudonymizer,
)
from ecgsearch.ingest.sources import diagnose_wfdb, enumerate_source, hash_of

SECRET = b"0123456789abcdef0123456789abcdef"


def _write(folder: Path, name: str, rec: wfdb.Record, *, fmt: str, gain_factor: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = rec.n_sig
    wfdb.wrsamp(name, fs=rec.fs, units=["mV"] * n, sig_name=rec.sig_name, p_signal=rec.p_signal * gain_factor,
                fmt=[fmt] * n, adc_gain=[1000.0] * n, baseline=[0] * n, write_dir=str(folder))  # fmt: skip
    return folder / name


def test_one_ecg_one_hash_whatever_the_file_format(tmp_path: Path, ptbxl_dir: Path) -> None:
    """Format 16 and format 32 files of one ECG (both read by wfdb_io): the same samples, one hash."""
    rec = wfdb.rdrecord(str(ptbxl_dir / "records100/00000/00001_lr"))
    a = signals.read_wfdb(_write(tmp_path / "a", "r", rec, fmt="16"))
    b = signals.read_wfdb(_write(tmp_path / "b", "r", rec, fmt="32"))
    assert np.array_equal(a.signal, b.signal)
    assert hash_of(a) == hash_of(b)
    assert hash_of(a) == hash_of(signals.read_wfdb(tmp_path / "a" / "r"))  # reading again: same hash
    five_x = signals.read_wfdb(_write(tmp_path / "c", "r", rec, fmt="16", gain_factor=5.0))
    assert hash_of(five_x) != hash_of(a)  # same ECG to the encoder, another recording to the store


def test_hash_covers_samples_rate_leads_and_units() -> None:
    x = np.random.default_rng(0).normal(size=(12, 1000))
    leads = tuple(signals.LEADS)
    base = content_hash(x, 100.0, leads, ("mV",) * 12)
    changed = x.copy()
    changed[5, 500] += 0.001
    variants = [
        content_hash(changed, 100.0, leads, ("mV",) * 12),
        content_hash(x, 500.0, leads, ("mV",) * 12),
        content_hash(x, 100.0, leads[::-1], ("mV",) * 12),
        content_hash(x, 100.0, leads, ("uV",) * 12),
        content_hash(x[:, :999], 100.0, leads, ("mV",) * 12),
    ]
    assert len({base, *variants}) == 6
    with_nan = x.copy()
    with_nan[0, 0] = np.nan
    other_nan = x.copy()
    other_nan[0, 0] = -np.float64("nan")  # another bit pattern of NaN: the same missing sample
    assert content_hash(with_nan, 100.0, leads, ("mV",) * 12) == content_hash(
        other_nan, 100.0, leads, ("mV",) * 12
    )


def test_pseudonyms_are_keyed_stable_and_per_dataset() -> None:
    site, same_site, other_site = (
        Pseudonymizer(SECRET),
        Pseudonymizer(bytes(SECRET)),
        Pseudonymizer(b"x" * 32),
    )
    one = site.patient("ptbxl", "15709")
    assert one == same_site.patient("ptbxl", "15709")  # one patient, one pseudonym across runs
    assert one.startswith("p-") and len(one) == 34 and "15709" not in one
    assert one != other_site.patient("ptbxl", "15709")  # another key: not linkable
    assert one != site.patient("georgia", "15709")  # patient ids are per dataset
    assert one != site.patient("ptbxl", "15710")
    assert site.of("ptbxl", " 15709 ", "ptbxl:1") == one
    lone = site.of("georgia", None, "georgia:E00001")
    assert lone == site.of("georgia", "", "georgia:E00001") == site.lone_ecg("georgia:E00001")
    assert lone != site.of("georgia", None, "georgia:E00002")  # ECGs without a patient: one each
    assert "secret" not in repr(site) and SECRET.decode() not in repr(site)
    with pytest.raises(SecretError, match="at least 16"):
        Pseudonymizer(b"short")


def test_default_secret_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = default_secret(store)
    mode = stat.S_IMODE((store / "site-secret").stat().st_mode)
    assert mode == 0o600 and len(first) == 64
    assert default_secret(store) == first
    assert site_pseudonymizer(None, store).patient("d", "1") == Pseudonymizer(first).patient("d", "1")
    given = tmp_path / "given"
    given.write_text("  " + "s" * 40 + "\n")
    assert site_pseudonymizer(given, store).secret == b"s" * 40  # the operator's file wins
    with pytest.raises(SecretError, match="--site-secret-file"):
        site_pseudonymizer(None, None)  # a Qdrant server: no folder of ours to keep a secret in
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(SecretError, match="holds 3 bytes"):
        read_secret(tmp_path / "short")
    with pytest.raises(SecretError, match="cannot read"):
        read_secret(tmp_path / "absent")


def test_challenge_group_folders_are_not_datasets(tmp_path: Path, data_dir: Path) -> None:
    """The Challenge's own layout, training/<dataset>/g<n>/<record>: the dataset is not 'g1'."""
    group = tmp_path / "training" / "georgia" / "g1"
    group.mkdir(parents=True)
    for f in (data_dir / "challenge" / "georgia").glob("E00001.*"):
        (group / f.name).symlink_to(f)
    (found,) = enumerate_source(tmp_path / "training")
    assert (found.record_id, found.dataset, found.source_path) == (
        "georgia:E00001",
        "georgia",
        "georgia/g1/E00001",
    )
    (explicit,) = enumerate_source(tmp_path / "training", dataset="challenge-georgia")
    assert explicit.record_id == "challenge-georgia:E00001"


def test_unreadable_records_are_described(tmp_path: Path, data_dir: Path) -> None:
    source = data_dir / "challenge/georgia/E00003"
    (tmp_path / "empty.hea").write_text("# only a comment\n\n")
    assert diagnose_wfdb(tmp_path / "empty") == "empty header"
    (tmp_path / "E00003.hea").write_bytes(source.with_suffix(".hea").read_bytes())
    (tmp_path / "E00003.mat").write_bytes(source.with_suffix(".mat").read_bytes()[:40_000])
    n_samples = int(source.with_suffix(".hea").read_text().split()[3])
    held = (40_000 - 24) // 24 * 12  # a 24-byte MATLAB header, then frames of 12 int16 samples
    expected = f"truncated signal: expected {12 * n_samples} samples, file has {held}"
    assert diagnose_wfdb(tmp_path / "E00003") == expected
    (tmp_path / "E00003.mat").unlink()
    assert diagnose_wfdb(tmp_path / "E00003") == "signal file E00003.mat is missing"
    assert diagnose_wfdb(source) is None  # a sound record: nothing to say


def test_cli_default_duplicate_threshold_is_the_measured_one() -> None:
    """The CLI states the threshold as a literal (so --help imports nothing); it must be the library's."""
    from ecgsearch.ecg import fingerprint
    from ecgsearch.ingest import cli

    assert cli.DUPLICATE_THRESHOLD == fingerprint.COPY_THRESHOLD
