"""PTB-XL's metadata table: one row per ECG, with diagnoses, superclasses, patient and fold.

Training, ingest and evaluation read PTB-XL through here so they agree on identity (one ECG per
``ecg_id``, whatever its sampling rate) and on what "superclass" means: the ``diagnostic_class`` of every
key of ``scp_codes`` that is a diagnostic statement, whatever its likelihood.
"""

from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Literal

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
TABLE = "ptbxl_database.csv"  # one row per ECG: ids, folds, SCP codes, metadata
STATEMENTS = "scp_statements.csv"  # one row per SCP code: its kind (diagnostic, form, rhythm) and class
SINUS_RHYTHM = "SR"  # the rhythm statement most ECGs carry
AGE_OVER_89 = 300  # PTB-XL's de-identified "over 89"
_SEX: dict[str, Literal["M", "F"]] = {"0": "M", "1": "F"}  # the table's sex column


@dataclass(frozen=True)
class PtbxlRow:
    """One ECG of the PTB-XL table; ``root`` is the folder holding ptbxl_database.csv."""

    ecg_id: int
    patient_id: int | None
    age: int | None
    sex: Literal["M", "F"] | None
    recorded_at: datetime | None
    scp_codes: dict[str, float]
    superclasses: frozenset[str]
    fold: int
    filename_lr: str
    filename_hr: str
    root: Path = field(compare=False)

    def path(self, prefer_hr: bool = False) -> Path:
        """Record path without extension; the 500 Hz file when asked for and present."""
        if prefer_hr and self.filename_hr and (self.root / f"{self.filename_hr}.hea").is_file():
            return self.root / self.filename_hr
        return self.root / self.filename_lr


_LOW_RATE_FILE = re.compile(r"records100/(\d{5})/(\d{5})_lr")


def high_rate_twin(source_path: str) -> str | None:
    """The 500 Hz file of the PTB-XL ECG whose 100 Hz file is ``source_path``, as PTB-XL names its files
    (``records100/00000/00001_lr`` -> ``records500/00000/00001_hr``); None for any other path. One ECG, two
    files: a reader showing the ECG wants the clinical rate where the 500 Hz file exists."""
    found = _LOW_RATE_FILE.fullmatch(source_path)
    return f"records500/{found[1]}/{found[2]}_hr" if found else None


@cache
def _statements(root: Path) -> tuple[tuple[str, dict[str, str]], ...]:
    """Every row of ``scp_statements.csv``: (SCP code, its columns)."""
    with (Path(root) / STATEMENTS).open(newline="") as handle:
        return tuple(
            (row[""] if "" in row else next(iter(row.values())), row) for row in csv.DictReader(handle)
        )


def diagnostic_classes(root: Path) -> dict[str, str]:
    """SCP code -> diagnostic superclass, for the diagnostic statements only."""
    return {
        code: row["diagnostic_class"]
        for code, row in _statements(Path(root))
        if row.get("diagnostic") == "1.0" and row.get("diagnostic_class")
    }


def rhythm_statements(root: Path) -> frozenset[str]:
    """The SCP codes PTB-XL marks as rhythm statements (SR, AFIB, STACH, ...)."""
    return frozenset(code for code, row in _statements(Path(root)) if row.get("rhythm") == "1.0")


def has_table(root: Path) -> bool:
    """Whether ``root`` holds PTB-XL's table (``TABLE``): a PTB-XL folder, not a folder of records."""
    return (Path(root) / TABLE).is_file()


def read_table(root: str | Path) -> list[PtbxlRow]:
    """Every row of ``root/ptbxl_database.csv``, in ecg_id order."""
    root = Path(root)
    classes = diagnostic_classes(root)
    rows = []
    with (root / TABLE).open(newline="") as handle:
        for row in csv.DictReader(handle):
            codes = {str(k): float(v) for k, v in ast.literal_eval(row["scp_codes"] or "{}").items()}
            rows.append(
                PtbxlRow(
                    ecg_id=int(row["ecg_id"]),
                    patient_id=_int(row["patient_id"]),
                    age=_int(row["age"]),
                    sex=_SEX.get(str(_int(row["sex"]))),
                    recorded_at=_date(row["recording_date"]),
                    scp_codes=codes,
                    superclasses=frozenset(classes[c] for c in codes if c in classes),
                    fold=int(row["strat_fold"]),
                    filename_lr=row["filename_lr"],
                    filename_hr=row["filename_hr"],
                    root=root,
                )
            )
    return sorted(rows, key=lambda r: r.ecg_id)


def _int(value: str) -> int | None:
    return int(float(value)) if value not in ("", None) else None


def _date(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
