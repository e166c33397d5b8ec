"""Sources on real records: PTB-XL table identity, Challenge header quirks, manifests and shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from ecgsearch.ecg.identity import Pseudonymizer
from ecgsearch.ingest.cli import parse_shard
from ecgsearch.ingest.sources import SourceError, enumerate_source, in_shard, load, select

KEYS = Pseudonymizer(b"a site secret of 32 bytes length")


def _by_id(source: Path, *ids: str) -> dict:
    wanted = set(ids)
    return {c.record_id: c for c in enumerate_source(source) if c.record_id in wanted}


def test_ptbxl_one_ecg_per_ecg_id(ptbxl_dir: Path) -> None:
    candidates = list(enumerate_source(ptbxl_dir))
    assert len(candidates) == 1987
    assert len({c.record_id for c in candidates}) == 1987
    assert candidates[0].record_id == "ptbxl:1"
    assert candidates[0].source_path == "records100/00000/00001_lr"
    hr = next(iter(enumerate_source(ptbxl_dir, prefer_hr=True)))
    assert hr.record_id == "ptbxl:1" and hr.source_path == "records500/00000/00001_hr"


def test_ptbxl_payload_from_table(ptbxl_dir: Path) -> None:
    first = load(next(iter(enumerate_source(ptbxl_dir))), KEYS)
    p = first.payload
    assert first.signal.shape == (12, 1000)
    assert (p.patient_id, p.age, p.sex, p.superclasses) == (KEYS.patient("ptbxl", "15709"), 56, "F", ["NORM"])
    assert p.scp_likelihoods == {"LVOLT": 0.0, "NORM": 100.0, "SR": 0.0}
    assert p.source_codes == ["SCP:LVOLT", "SCP:NORM", "SCP:SR"]
    assert "426783006" in p.diagnoses  # SR -> SNOMED sinus rhythm
    assert p.sampling_rate_hz == 100.0 and p.duration_s == 10.0 and p.recorded_at is not None


def test_ptbxl_age_over_89(ptbxl_dir: Path) -> None:
    from ecgsearch.ecg.ptbxl import read_table

    row = next(r for r in read_table(ptbxl_dir) if r.age == 300)
    (candidate,) = _by_id(ptbxl_dir, f"ptbxl:{row.ecg_id}").values()
    assert candidate.meta is not None
    assert (candidate.meta.age, candidate.meta.age_over_89) == (90, True)


def test_challenge_header_quirks(data_dir: Path) -> None:
    found = _by_id(data_dir / "challenge", "georgia:E00001", "ptb:S0001")
    georgia = load(found["georgia:E00001"], KEYS).payload  # header names the file 'E00001.mat'
    assert (georgia.dataset, georgia.age, georgia.sex, georgia.diagnoses) == ("georgia", None, "F", [])
    assert georgia.source_path == "georgia/E00001" and georgia.patient_id == KEYS.lone_ecg("georgia:E00001")
    ptb = load(found["ptb:S0001"], KEYS).payload  # 'Sex: female', 38.4 s at 1000 Hz: first 10 s embedded
    assert (ptb.sex, ptb.age, ptb.sampling_rate_hz, ptb.duration_s) == ("F", 81, 1000.0, 38.4)


def test_challenge_lowercase_male_and_codes(data_dir: Path) -> None:
    folder = data_dir / "challenge"
    male = next(h for h in sorted(folder.rglob("*.hea")) if "Sex: male" in h.read_text())
    (candidate,) = _by_id(folder, f"{male.parent.name}:{male.stem}").values()
    assert load(candidate, KEYS).payload.sex == "M"
    header = (data_dir / "cinc2021" / "E07500.hea").read_text()
    dx = next(line for line in header.splitlines() if "Dx:" in line).split(":", 1)[1].strip().split(",")
    payload = load(next(iter(_by_id(data_dir / "cinc2021", "cinc2021:E07500").values())), KEYS).payload
    assert payload.source_codes == [f"SNOMED:{c}" for c in dx]
    assert payload.diagnoses and all(code.isdigit() for code in payload.diagnoses)


def test_manifest_paths_ids_and_datasets(tmp_path: Path, data_dir: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,record_id,dataset\n"
        f"{data_dir}/challenge/georgia/E00001.hea,,\n"
        f"{data_dir}/ptb-xl/records100/00000/00002_lr,ptbxl:2,\n"
        f"{data_dir}/cinc2021/JS20000,,chapman\n"
    )
    found = list(enumerate_source(manifest))
    assert [c.record_id for c in found] == ["georgia:E00001", "ptbxl:2", "chapman:JS20000"]
    assert [c.source_path for c in found] == [None, None, None]  # outside the manifest's folder
    (tmp_path / "named").mkdir()
    (tmp_path / "inside.csv").write_text("path,record_id\nnamed/MRN123,\nnamed/MRN456,site:7\n")
    inside = list(enumerate_source(tmp_path / "inside.csv"))
    assert [(c.record_id, c.source_path) for c in inside] == [
        ("named:MRN123", "named/MRN123"),
        ("site:7", None),
    ]
    (tmp_path / "bad.csv").write_text("file\nx\n")
    with pytest.raises(SourceError, match="'path' column"):
        list(enumerate_source(tmp_path / "bad.csv"))
    with pytest.raises(SourceError):
        enumerate_source(tmp_path / "missing")


def test_shards_cover_every_record_once(ptbxl_dir: Path) -> None:
    ids = [c.record_id for c in enumerate_source(ptbxl_dir)]
    shards = [[c.record_id for c in select(enumerate_source(ptbxl_dir), shard=(i, 3))] for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert all(len(s) > 500 for s in shards)  # roughly even
    # Known answers (first 8 bytes of sha256, mod N): every machine and Python version splits alike.
    known = {"ptbxl:1": 2, "ptbxl:4": 1, "ptbxl:5": 3, "ptbxl:6": 1}
    for record_id, shard in known.items():
        assert [i for i in (1, 2, 3) if in_shard(record_id, i, 3)] == [shard], record_id
    assert len(list(select(enumerate_source(ptbxl_dir), shard=(1, 3), limit=5))) == 5


@pytest.mark.parametrize("bad", ["0/3", "4/3", "x", "1/2/3"])
def test_shard_option_rejects_bad_values(bad: str) -> None:
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(typer.BadParameter):
        parse_shard(bad)


HOSTILE = "<img src=x onerror=alert(1)>"


def _wfdb_copy(ptbxl_dir: Path, folder: Path, name: str = "00001_lr") -> None:
    """A real PTB-XL record (header and signal) copied under ``folder`` as ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    original = ptbxl_dir / "records100" / "00000" / "00001_lr"
    header = original.with_suffix(".hea").read_text().replace("00001_lr", name)
    (folder / f"{name}.hea").write_text(header)
    (folder / f"{name}.dat").write_bytes(original.with_suffix(".dat").read_bytes())


def _refused(source: Path, **options: str) -> str:
    """The SourceError's message; a manifest cell's or --dataset's value is never repeated in it (a folder
    is named by its path, as ``ascii()`` writes it: the operator must find it)."""
    with pytest.raises(SourceError) as info:
        list(enumerate_source(source, **options))
    message = str(info.value)
    if source.suffix == ".csv" or options:
        assert "<img" not in message
    return message


def test_hostile_ids_and_dataset_names_are_refused_naming_the_field(ptbxl_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "by-folder"
    _wfdb_copy(ptbxl_dir, folder / HOSTILE)
    message = _refused(folder)
    assert message.startswith(
        f"{ascii(HOSTILE + '/00001_lr.hea')}: dataset (the folder's name): character 1 "
    )
    assert [c.record_id for c in enumerate_source(folder, dataset="ward-3")] == ["ward-3:00001_lr"]
    assert "--dataset: dataset: character 1" in _refused(folder, dataset=HOSTILE)

    named = tmp_path / "by-name"
    _wfdb_copy(ptbxl_dir, named / "ward", name="rec 1")
    assert "record_id: character 9 is not allowed" in _refused(named)

    manifest = tmp_path / "manifest.csv"
    _wfdb_copy(ptbxl_dir, tmp_path / "ward")
    record = tmp_path / "ward" / "00001_lr"
    rows = {
        "record_id": f"path,record_id\n{record},ok-1\n{record},{HOSTILE}\n",
        "dataset (the dataset column)": f"path,dataset\n{record},ward\n{record},ward 3\n",
        "record_id: 305 characters, at most 258": f"path,record_id\n{record},ok-1\n{record},{'x' * 300}\n",
    }
    for field, text in rows.items():
        manifest.write_text(text)
        message = _refused(manifest)
        assert message.startswith(f"{manifest}:3: ") and field in message, message
    manifest.write_text(f"path,record_id,dataset\n{record},HR-1,ward.3\n{record},ptbxl:17,ptbxl\n")
    assert [c.record_id for c in enumerate_source(manifest)] == ["ward.3:HR-1", "ptbxl:17"]


def test_ingest_of_a_hostile_folder_stores_nothing(ptbxl_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ecgsearch.cli.main import app

    folder = tmp_path / "export"
    _wfdb_copy(ptbxl_dir, folder / "ward", name="00001_lr")
    _wfdb_copy(ptbxl_dir, folder / HOSTILE, name="00002_lr")
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["ingest", str(folder), "--store", str(store), "--quiet"])
    assert result.exit_code == 2 and "dataset (the folder's name)" in result.output
    assert not (store / "collections").exists()
