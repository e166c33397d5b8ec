"""Shared fixtures: the real data folder and an isolated ECGSEARCH_HOME for every test."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data beside the checkout (or ECGSEARCH_TEST_DATA); a missing folder fails loudly."""
    path = Path(os.environ.get("ECGSEARCH_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (path / "ptb-xl" / "ptbxl_database.csv").is_file():
        pytest.fail(f"test data not found at {path}; set ECGSEARCH_TEST_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def ptbxl_dir(data_dir: Path) -> Path:
    return data_dir / "ptb-xl"


@pytest.fixture(autouse=True)
def ecgsearch_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test's state (stores, rejects reports, results) out of the user's home."""
    home = tmp_path_factory.mktemp("ecgsearch_home")
    monkeypatch.setenv("ECGSEARCH_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("ECGSEARCH_") and name not in {"ECGSEARCH_HOME", "ECGSEARCH_TEST_DATA"}:
            monkeypatch.delenv(name)
    return home


CHROMIUM = Path("/usr/bin/chromium")


def _one_failure_without_chromium(items: list[pytest.Item]) -> None:
    """Without Debian's chromium, the first browser test fails (its fixture names the missing browser in
    one line) and the others skip, instead of one error per test."""
    needing = [item for item in items if "browser" in getattr(item, "fixturenames", ())]
    if not needing or CHROMIUM.is_file():
        return
    for item in needing[1:]:
        item.add_marker(pytest.mark.skip(reason=f"no browser at {CHROMIUM}: see {needing[0].nodeid}"))


# The second tier: whole modules whose fixtures build stores, servers, browsers or trained models, and the
# single tests that take seconds on 2 cores. README's test command leaves them out (pyproject's addopts);
# CI runs them with `-m slow`. New slow tests carry @pytest.mark.slow themselves.
SLOW_MODULES = {
    "tests/bench/test_bench_ingest.py",
    "tests/bench/test_bench_recall.py",
    "tests/bench/test_bench_service.py",
    "tests/bench/test_eval_retrieval.py",
    "tests/encoder/test_distributed.py",
    "tests/ingest/test_hospital.py",
    "tests/search/test_snapshots.py",
    "tests/search/test_store.py",
    "tests/search/test_store_conformance.py",
    "tests/web/test_browser.py",
}
SLOW_TESTS = {
    "tests/encoder/test_shards.py::test_mixed_precision_path_checkpoints_its_scaler",
    "tests/encoder/test_train.py::test_resumed_run_equals_an_uninterrupted_one",
    "tests/encoder/test_train.py::test_same_seed_gives_identical_weights",
    "tests/ingest/test_ingest_pipeline.py::test_copies_across_datasets_are_marked_duplicate_of",
    "tests/ingest/test_ingest_pipeline.py::test_index_settings_are_chosen_at_creation_and_then_fixed",
    "tests/ingest/test_ingest_pipeline.py::test_kill_9_during_start_up_leaves_no_process",
    "tests/ingest/test_ingest_pipeline.py::test_one_id_twice_in_one_run",
    "tests/ingest/test_ingest_pipeline.py::test_resume_after_kill_9",
    "tests/ingest/test_ingest_pipeline.py::test_site_secret_file_keys_pseudonyms_across_stores",
    "tests/ingest/test_ingest_pipeline.py::test_a_different_ecg_under_a_stored_id_is_a_collision",
    "tests/search/test_admin.py::test_collection_info_json_and_text",
    "tests/search/test_auth.py::test_ingest_sets_the_site_and_refuses_a_bad_one",
    "tests/search/test_plan.py::test_each_plan_returns_the_exact_top_k",
    "tests/search/test_server.py::test_mutual_tls",
    "tests/search/test_service.py::test_deadline_checked_before_expensive_work",
    "tests/search/test_service.py::test_requests_never_call_store_info",
    "tests/search/test_telemetry.py::test_metrics_count_calls_by_method_and_code",
    "tests/test_deploy.py::test_service_starts_with_the_manifest_settings_and_passes_the_image_healthcheck",
    "tests/test_layout.py::test_help_and_completion_import_no_heavy_library",
    "tests/test_layout.py::test_serving_imports_without_torch",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _mark_second_tier(items)
    _one_failure_without_chromium(items)


def _mark_second_tier(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::")[0]
        test = item.nodeid.split("[")[0]
        if module in SLOW_MODULES or test in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    stale = _stale_entries()
    assert not stale, f"tests/conftest.py names tests that no longer exist: {stale}"


def _stale_entries() -> list[str]:
    """Entries of the lists whose module or test function is gone, read from the files themselves, so
    any run (one test, one file or the whole suite) checks the lists the same way."""
    stale = []
    for entry in sorted(SLOW_MODULES | SLOW_TESTS):
        module, _, test = entry.partition("::")
        path = REPO / module
        if not path.is_file() or (
            test and not re.search(rf"^def {re.escape(test)}\(", path.read_text(), re.M)
        ):
            stale.append(entry)
    return stale
