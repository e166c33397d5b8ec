"""The viewer end to end in headless Chromium (Debian's package, driven by Playwright): a real
``ecgsearch serve`` over PTB-XL records and ``web`` in another process, both on loopback ports.

With ECGSEARCH_WEB_ARTIFACTS=<repo root> the results-page test also writes docs/images/viewer.png and
results/web_render.json there (how the committed screenshot and timing were made).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

if TYPE_CHECKING:  # the fixtures' types, from tests/web/conftest.py
    from conftest import Service, Viewer


ARTIFACTS = os.environ.get(
    "ECGSEARCH_WEB_ARTIFACTS"
)  # read at import: the autouse fixture clears ECGSEARCH_*
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSPITAL_SAMPLE = "muse_braveheart_example1.xml"
RENDER_RUNS = 5
QRS_MIN = 120  # ms: a wide QRS


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no browser at {CHROMIUM}: apt-get install -y chromium (as .ci/run does)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()


def _search_by_record(page: Page, viewer: Viewer, record_id: str) -> None:
    page.goto(viewer.url + "/")
    page.fill("#record_id", record_id)
    page.click("#search-button")
    page.wait_for_selector("#query-label")


def _neighbour_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all("li.neighbour", "els => els.map(e => e.dataset.recordId)")


def test_search_by_record_draws_query_neighbours_and_summary(
    page: Page, viewer: Viewer, service: Service
) -> None:
    query = service.payloads[3]
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    _search_by_record(page, viewer, query.record_id)
    assert page.inner_text("#query-label") == query.record_id
    assert console_errors == []  # nothing blocked by the page's content security policy, nothing missing
    # The query on the paper grid (5 mm major squares, 1 mm minor) with the 3 x 4 leads and a lead II strip.
    assert page.locator("#query-ecg svg pattern.grid-major").get_attribute("width") == "50"
    assert page.locator("#query-ecg svg pattern.grid-minor").get_attribute("width") == "10"
    assert page.locator("#query-ecg g.lead").count() == 13
    assert page.locator("#query-ecg g.rhythm").get_attribute("data-lead") == "II"
    assert "10 mm/mV" in page.inner_text("#query-ecg")
    # Drawn as recorded, from its 500 Hz file: the 10 s lead II strip has every one of its 5,000 samples.
    assert query.source_path and query.source_path.startswith("records100/")  # stored from the 100 Hz file
    assert "at 500 Hz" in page.inner_text("#query-rate")
    assert len(page.locator("#query-ecg g.rhythm polyline").get_attribute("points").split()) == 5000
    # Ten neighbours, never the query itself nor its patient's other ECGs, each as a 12-lead thumbnail.
    ids = _neighbour_ids(page)
    same_patient = {p.record_id for p in service.payloads if p.patient_id == query.patient_id}
    assert len(ids) == 10 and not set(ids) & same_patient
    assert page.locator("li.neighbour svg.compact").count() == 10
    assert page.locator("li.neighbour").first.locator("g.lead").count() == 12
    scores = [float(s.split()[-1]) for s in page.locator("li.neighbour .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    # Diagnoses by name, the code on hover; the summary chart has a bar pair per diagnosis.
    first = service.payloads[[p.record_id for p in service.payloads].index(ids[0])]
    titles = page.locator("li.neighbour").first.locator(".dx").evaluate_all("els => els.map(e => e.title)")
    assert titles == first.diagnoses
    assert page.locator("#summary g.diagnosis").count() >= 1
    assert (
        page.locator("#summary g.diagnosis rect.base").count() == page.locator("#summary g.diagnosis").count()
    )
    # No personal data beyond what the service returns: no patient id, no source path.
    body = page.content()
    assert first.source_path not in body and f">{first.patient_id}<" not in body

    timing = _render_timing(page)
    print(f"results page, 10 neighbours: {json.dumps(timing)}")
    if ARTIFACTS:
        _write_artifacts(page, timing, Path(ARTIFACTS))


def _render_timing(page: Page) -> dict[str, object]:
    """Median over RENDER_RUNS reloads: server time to first byte and time to the load event (ms)."""
    server, total, sizes = [], [], []
    for _ in range(RENDER_RUNS):
        page.reload(wait_until="load")
        entry = page.evaluate(
            "() => { const e = performance.getEntriesByType('navigation')[0];"
            " return {ttfb: e.responseStart - e.requestStart, load: e.loadEventEnd - e.startTime,"
            " bytes: e.transferSize}; }"
        )
        server.append(entry["ttfb"])
        total.append(entry["load"])
        sizes.append(entry["bytes"])
    return {
        "neighbours": 10,
        "runs": RENDER_RUNS,
        "server_ms_p50": round(statistics.median(server), 1),
        "page_load_ms_p50": round(statistics.median(total), 1),
        "page_bytes": int(statistics.median(sizes)),
    }


def _bundled_model_version() -> str:
    """The model whose neighbours the screenshot shows: captions name it, a test compares them."""
    from importlib import resources

    card = resources.files("ecgsearch.export.models").joinpath("ecg-encoder.card.json")
    return json.loads(card.read_text())["version"]


def _write_artifacts(page: Page, timing: dict[str, object], root: Path) -> None:
    (root / "docs" / "images").mkdir(parents=True, exist_ok=True)
    from PIL import Image  # with matplotlib (bench extra); a 64-colour palette keeps the file small

    shot = root / "docs" / "images" / "viewer.png"
    page.screenshot(path=str(shot), full_page=False)
    Image.open(shot).convert("RGB").quantize(64).save(shot, optimize=True)
    record = {
        "benchmark": "web_results_page",
        "command": "ECGSEARCH_WEB_ARTIFACTS=. python -m pytest -q tests/web/test_browser.py -k draws",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: timings vary with it
        },
        "store": "60 PTB-XL records, bundled model, embedded store, ecgsearch serve on loopback",
        "browser": "Debian chromium, headless, Playwright",
        "model": _bundled_model_version(),
        **timing,
    }
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / "web_render.json").write_text(json.dumps(record, indent=2) + "\n")


def test_filter_keeps_only_matching_neighbours(page: Page, viewer: Viewer, service: Service) -> None:
    query = service.payloads[0]
    women = [p for p in service.payloads if p.sex == "F" and p.patient_id != query.patient_id]
    code, _ = Counter(c for p in women for c in p.diagnoses).most_common(1)[0]
    expected = [p for p in women if code in p.diagnoses]
    _search_by_record(page, viewer, query.record_id)
    page.select_option("#sex", "F")
    page.fill("#dx_any", code)
    page.fill("#k", "20")
    page.click("#search-button")
    page.wait_for_selector("#query-label")
    ids = _neighbour_ids(page)
    assert len(ids) == min(20, len(expected)) and set(ids) <= {p.record_id for p in expected}
    assert set(page.locator("li.neighbour .sex").all_inner_texts()) == {"female"}
    # The form keeps the filter (the diagnosis as a ticked choice, with its code), and the page says it.
    assert page.locator("#sex").input_value() == "F"
    chosen = page.locator(f'#dx_any-field input[type=checkbox][data-code="{code}"]')
    assert chosen.is_checked() and f"({code})" in page.inner_text("#dx_any-field")
    active = page.inner_text("#active-filters")
    assert "sex: female" in active and "diagnosis any of: " in active and f"({code})" in active


def test_invalid_filter_is_explained(page: Page, viewer: Viewer, service: Service) -> None:
    record = service.payloads[0].record_id
    response = page.goto(f"{viewer.url}/search?record_id={record}&age_min=80&age_max=20")
    assert response is not None and response.status == 400
    assert "age range: from 80 is above to 20" in page.inner_text(".error")
    assert page.locator("#record_id").input_value() == record  # the query is kept for the next try
    response = page.goto(f"{viewer.url}/search?record_id={record}&k=abc")
    assert response is not None and response.status == 400
    assert "k: 'abc' is not a whole number" in page.inner_text(".error")
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    response = page.goto(f"{viewer.url}/search?record_id=ptbxl:999999")
    assert response is not None and response.status == 404
    assert "ptbxl:999999" in page.inner_text(".error")


def test_upload_a_hospital_file(page: Page, viewer: Viewer, data_dir: Path) -> None:
    page.goto(viewer.url + "/")
    page.set_input_files("#ecg-file", str(data_dir / "hospital" / HOSPITAL_SAMPLE))
    page.click("#upload-button")
    page.wait_for_selector("#query-label")
    assert page.inner_text("#query-label") == "uploaded muse-xml file"
    assert "25 mm/s · 10 mm/mV" in page.inner_text("#query-ecg")  # the file's own mV, at paper scale
    # The machine's measurements as the file states them (<RestingECGMeasurements>), with units.
    assert "QRS 96 ms" in page.inner_text("#query-measures") and "QTc 403 ms" in page.inner_text(
        "#query-measures"
    )
    assert len(_neighbour_ids(page)) == 10
    assert HOSPITAL_SAMPLE not in page.content()  # a file name can carry personal data: never shown
    # Refining the filter keeps the held upload as the query.
    page.select_option("#sex", "M")
    page.click("#search-button")
    page.wait_for_selector("#query-label")
    assert page.inner_text("#query-label") == "uploaded muse-xml file"
    assert set(page.locator("li.neighbour .sex").all_inner_texts()) == {"male"}
    page.locator("li.neighbour a.compare").first.click()
    page.wait_for_selector("#compare-ecg svg")
    assert "Aligned on the first R peak" in page.inner_text("#alignment")


def test_upload_with_a_sex_filter_keeps_only_that_sex(
    page: Page, viewer: Viewer, service: Service, data_dir: Path
) -> None:
    """The filter set on the start page applies to the uploaded file's search, and the page says so."""
    women = {p.record_id for p in service.payloads if p.sex == "F"}
    page.goto(viewer.url + "/")
    page.select_option("#sex", "F")
    page.fill("#k", "15")
    page.set_input_files("#ecg-file", str(data_dir / "hospital" / HOSPITAL_SAMPLE))
    page.click("#upload-button")
    page.wait_for_selector("#query-label")
    assert page.inner_text("#query-label") == "uploaded muse-xml file"
    ids = _neighbour_ids(page)
    assert len(ids) == min(15, len(women)) and set(ids) <= women
    assert set(page.locator("li.neighbour .sex").all_inner_texts()) == {"female"}
    assert "sex: female" in page.inner_text("#active-filters")
    assert page.locator("#sex").input_value() == "F"  # the refine form carries it on


def test_pick_a_diagnosis_by_typing_part_of_its_name(page: Page, viewer: Viewer, service: Service) -> None:
    """The typeahead lists the collection's diagnoses by name and code; part of a name that names one
    diagnosis is enough, and the search keeps only neighbours carrying it."""
    from ecgsearch.ecg import codes

    counts = Counter(c for p in service.payloads for c in p.diagnoses)
    names = {code: codes.describe(code) for code in counts}
    # A word of a name that no other stored diagnosis' name or code contains, from a code held by several.
    part, code = next(
        (word, code)
        for code, _ in counts.most_common()
        for word in names[code].split()
        if len(word) >= 5
        and [c for c in names if word.casefold() in names[c].casefold() or word.casefold() in c.casefold()]
        == [code]
    )
    query = service.payloads[0]
    page.goto(viewer.url + "/")
    page.fill("#record_id", query.record_id)
    page.locator("#dx_any").press_sequentially(part.lower())
    listed = page.eval_on_selector_all("#dx-options option", "els => els.map(e => e.value)")
    assert f"{names[code]} ({code})" in listed and len(listed) == len(counts)
    page.click("#search-button")
    page.wait_for_selector("#query-label")
    chosen = page.locator(f'#dx_any-field input[type=checkbox][data-code="{code}"]')
    assert chosen.is_checked()
    assert f"diagnosis any of: {names[code]} ({code})" in page.inner_text("#active-filters")
    ids = _neighbour_ids(page)
    carriers = {p.record_id for p in service.payloads if code in p.diagnoses}
    assert ids and set(ids) <= carriers
    # An ambiguous fragment is named, not guessed.
    page.goto(viewer.url + "/")
    page.fill("#record_id", query.record_id)
    page.fill("#dx_any", "a")
    with page.expect_navigation() as nav:
        page.click("#search-button")
    assert nav.value is not None and nav.value.status == 400
    assert "matches" in page.inner_text(".error") and "pick one" in page.inner_text(".error")


def test_counts_and_base_rates_stand_beside_every_ratio(page: Page, viewer: Viewer, service: Service) -> None:
    from ecgsearch.search.summary import MIN_COUNT

    _search_by_record(page, viewer, service.payloads[3].record_id)
    rows = page.locator("#summary-table tbody tr")
    assert rows.count() >= 1
    for i in range(rows.count()):
        row = rows.nth(i)
        count, n = (int(x) for x in (row.locator("td.count").text_content() or "").split("/"))
        assert n == 10 and 1 <= count <= n and (row.locator("td.base").text_content() or "").endswith("%")
        if row.get_attribute("data-highlighted") == "true":
            assert count >= MIN_COUNT
    groups = page.locator("#summary g.diagnosis")
    for i in range(groups.count()):
        group = groups.nth(i)
        assert (group.locator("text.counts").text_content() or "").startswith(
            f"{group.get_attribute('data-count')}/10 "
        )
        if group.get_attribute("data-highlighted") == "true":
            assert int(group.get_attribute("data-count") or 0) >= MIN_COUNT


def test_open_a_neighbour_and_compare(page: Page, viewer: Viewer, service: Service) -> None:
    _search_by_record(page, viewer, service.payloads[5].record_id)
    first = _neighbour_ids(page)[0]
    page.locator("li.neighbour a.thumb").first.click()
    page.wait_for_selector("#record-ecg svg")
    assert page.inner_text("#record-title") == first
    assert page.locator("#record-ecg g.rhythm").count() == 1  # full size: 3 x 4 and the rhythm strip
    page.click("#compare-link")
    page.wait_for_selector("#compare-ecg svg")
    assert page.locator("#compare-ecg polyline[data-role=neighbour]").count() == 12
    assert page.locator("#compare-ecg polyline[data-role=query]").count() == 12
    assert "Aligned on the first R peak of lead II" in page.inner_text("#alignment")
    # The 60 stored records (ecg_id up to 60) all have 500 Hz files: compared as recorded, at 500 Hz.
    assert "at 500 Hz" in page.inner_text("#alignment")
    query_ii = page.locator("#compare-ecg g.lead[data-lead=II] polyline[data-role=query]")
    assert len(query_ii.get_attribute("points").split()) == 5000


def test_bad_upload_shows_the_error(page: Page, viewer: Viewer, tmp_path: Path) -> None:
    bad = tmp_path / "patient-name-0001.xml"
    bad.write_bytes(b"<not-an-ecg>garbage\x00\x01</not-an-ecg>")
    page.goto(viewer.url + "/")
    page.set_input_files("#ecg-file", str(bad))
    with page.expect_navigation() as nav:
        page.click("#upload-button")
    assert nav.value is not None and nav.value.status == 400
    message = page.inner_text(".error")
    assert message.startswith("Upload refused: not a readable ECG file")
    assert "patient-name" not in page.content()


def test_oversized_upload_and_service_down(
    page: Page,
    service: Service,
    data_dir: Path,
    dead_target: str,
    launch_viewer: Callable[..., Viewer],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    small = launch_viewer(
        service.target,
        tmp_path_factory.mktemp("small"),
        "--token-file",
        str(service.token_file),
        "--max-upload-mb",
        "0.05",
    )
    down = launch_viewer(dead_target, tmp_path_factory.mktemp("down"), "--timeout", "3")
    try:
        page.goto(small.url + "/")
        page.set_input_files("#ecg-file", str(data_dir / "hospital" / HOSPITAL_SAMPLE))
        with page.expect_navigation() as nav:
            page.click("#upload-button")
        assert nav.value is not None and nav.value.status == 413
        assert "larger than 0.05 MB" in page.inner_text(".error")

        response = page.goto(down.url + "/search?record_id=ptbxl:1")
        assert response is not None and response.status == 503
        assert "is not reachable" in page.inner_text(".error")
    finally:
        small.close()
        down.close()


def test_wrong_token_is_reported(
    page: Page, service: Service, tmp_path: Path, launch_viewer: Callable[..., Viewer]
) -> None:
    token = tmp_path / "wrong.token"
    token.write_text("not-the-token\n")
    wrong = launch_viewer(service.target, tmp_path / "home", "--token-file", str(token))
    try:
        response = page.goto(wrong.url + "/")
        assert response is not None and response.status == 502
        assert "refused this viewer's credentials (UNAUTHENTICATED)" in page.inner_text(".error")
    finally:
        wrong.close()


def test_signals_the_service_cannot_read_are_explained(
    page: Page,
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    launch_service: Callable[..., Iterator[Service]],
    launch_viewer: Callable[..., Viewer],
) -> None:
    """A service without --ecg-roots still searches; the pictures give way to its reason."""
    root = tmp_path_factory.mktemp("no-roots")
    service = launch_service(root, data_dir / "ptb-xl", 12, ecg_roots=False)
    served = next(service)
    viewer = launch_viewer(served.target, root / "home", "--token-file", str(served.token_file))
    try:
        _search_by_record(page, viewer, served.payloads[0].record_id)
        assert len(_neighbour_ids(page)) == 10
        assert page.locator("li.neighbour svg").count() == 0
        notices = page.locator("li.neighbour .notice").all_inner_texts()
        assert len(notices) == 10 and all("ECGSEARCH_ECG_ROOTS" in n for n in notices)
        assert "The query's signal cannot be drawn" in page.inner_text("section.query")
        page.locator("li.neighbour a.record").first.click()
        page.wait_for_selector("#record-title")
        assert "ECGSEARCH_ECG_ROOTS" in page.inner_text(".notice")
    finally:
        viewer.close()
        service.close()


def test_measurement_range_keeps_only_matching_neighbours(
    page: Page,
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    launch_service: Callable[..., Iterator[Service]],
    launch_viewer: Callable[..., Viewer],
) -> None:
    """PTB-XL has no machine measurements: hospital exports, ingested beside it, carry them."""
    root = tmp_path_factory.mktemp("measures")
    service = launch_service(root, data_dir / "ptb-xl", 12, hospital=data_dir / "hospital")
    served = next(service)
    viewer = launch_viewer(served.target, root / "home", "--token-file", str(served.token_file))
    try:
        measured = [p for p in served.payloads if p.qrs_ms is not None and p.qtc_ms is not None]
        query = next(p for p in measured if p.qrs_ms is not None and p.qrs_ms < QRS_MIN)
        wide = {
            p.record_id
            for p in measured
            if p.qrs_ms is not None
            and p.qrs_ms >= QRS_MIN
            and p.duplicate_of is None
            and p.patient_id != query.patient_id
        }
        assert wide  # the hospital samples hold wide-QRS ECGs
        _search_by_record(page, viewer, query.record_id)
        # The query panel shows the machine's measurements with units.
        shown = page.inner_text("#query-measures")
        assert f"QRS {query.qrs_ms:.0f} ms" in shown and f"QTc {query.qtc_ms:.0f} ms" in shown
        assert len(_neighbour_ids(page)) == 10  # without the range: PTB-XL neighbours too
        page.click("#measure-filters summary")
        page.fill("#qrs_ms_min", str(QRS_MIN))
        page.fill("#k", "20")
        page.click("#search-button")
        page.wait_for_selector("#query-label")
        ids = _neighbour_ids(page)
        assert ids and set(ids) == wide
        qrs = page.locator("li.neighbour .measure[data-measure=qrs_ms]")
        assert qrs.count() == len(ids)
        assert all(float(v) >= QRS_MIN for v in qrs.evaluate_all("els => els.map(e => e.dataset.value)"))
        assert all(t.startswith("QRS ") and t.endswith(" ms") for t in qrs.all_inner_texts())
        assert page.locator("li.neighbour svg.compact").count() == len(ids)  # archived signals are drawn
        # The form keeps the range; an inverted range is refused, naming the field.
        assert page.locator("#qrs_ms_min").input_value() == str(QRS_MIN)
        response = page.goto(f"{viewer.url}/search?record_id={query.record_id}&qrs_ms_min=150&qrs_ms_max=100")
        assert response is not None and response.status == 400
        assert "Invalid filter: QRS (ms) range: from 150 is above to 100" in page.inner_text(".error")
        assert query.patient_id is not None and query.patient_id not in page.content()
    finally:
        viewer.close()
        service.close()


def test_an_af_query_and_an_af_neighbour_are_overlaid_beat_by_beat(
    page: Page,
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    launch_service: Callable[..., Iterator[Service]],
    launch_viewer: Callable[..., Viewer],
) -> None:
    """PTB-XL ecg_id 17 and 152, both atrial fibrillation: the comparison draws each lead's median beat
    of both ECGs with their R peaks on one line, besides the 10 s overlay on the first R peak."""
    root = tmp_path_factory.mktemp("af")
    service = launch_service(root, data_dir / "ptb-xl", 160)
    served = next(service)
    af = [p.record_id for p in served.payloads if "164889003" in p.diagnoses]
    assert {"ptbxl:17", "ptbxl:152"} <= set(af)
    viewer = launch_viewer(served.target, root / "home", "--token-file", str(served.token_file))
    try:
        page.goto(f"{viewer.url}/compare?record_id=ptbxl:17&neighbour=ptbxl:152")
        page.wait_for_selector("#median-ecg svg")
        note = page.inner_text("#beat-alignment")
        counts = [int(w) for w in note.replace(",", " ").split() if w.isdigit()]
        assert len(counts) == 2 and min(counts) >= 5, note
        assert page.locator("#median-ecg g.lead").count() == 12
        assert page.locator("#median-ecg polyline[data-role=query]").count() == 12
        assert page.locator("#median-ecg polyline[data-role=neighbour]").count() == 12
        # Lead II: both median beats have their largest deflection at the R line.
        marks = page.eval_on_selector_all(
            "#median-ecg g.lead[data-lead=II] polyline",
            """els => els.map(e => {
                const pts = e.getAttribute('points').split(' ').map(p => p.split(',').map(Number));
                const ys = pts.map(p => p[1]); const mid = ys.slice().sort((a, b) => a - b)[ys.length >> 1];
                let best = 0;
                pts.forEach((p, i) => { if (Math.abs(p[1] - mid) > Math.abs(pts[best][1] - mid)) best = i; });
                return pts[best][0]; })""",
        )
        assert len(marks) == 2 and abs(marks[0] - marks[1]) <= 25  # 2.5 mm: one sample at 100 Hz is 2.5 mm
        assert "Aligned on the first R peak of lead II" in page.inner_text("#alignment")
    finally:
        viewer.close()
        service.close()


def test_the_printable_report_renders_on_one_page(page: Page, viewer: Viewer, service: Service) -> None:
    """From a filtered results page: the report names the model, the filter and the time of the search,
    draws the query and its top neighbours with the diagnosis counts, and prints as one A4 page."""
    from ecgsearch.web.app import REPORT_NEIGHBOURS

    query = service.payloads[3]
    page.goto(f"{viewer.url}/search?record_id={query.record_id}&k=10&sex=F")
    page.wait_for_selector("#query-label")
    page.click("#report-link")
    page.wait_for_selector("#report")
    assert page.inner_text("#query-label") == query.record_id
    assert page.inner_text("#model-version") == _bundled_model_version()
    searched = datetime.strptime(page.inner_text("#searched-at"), "%Y-%m-%d %H:%M UTC").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - searched).total_seconds()) < 120
    assert "sex: female" in page.inner_text("#active-filters")
    assert page.locator("#query-ecg g.lead").count() == 13
    ids = _neighbour_ids(page)
    assert 1 <= len(ids) <= REPORT_NEIGHBOURS
    assert all(t.endswith("· female") for t in page.locator("li.neighbour .demo").all_inner_texts())
    counts = page.locator("#summary-table td.count").all_inner_texts()
    assert counts and all(c.endswith("/10") for c in counts)
    page.emulate_media(media="print")
    assert not page.locator("header").is_visible()
    pdf = page.pdf(format="A4", prefer_css_page_size=True)
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1


def test_similar_by_a_view_is_chosen_beside_the_filters_and_named_on_the_page(
    page: Page, viewer: Viewer, service: Service
) -> None:
    query = service.payloads[0]
    _search_by_record(page, viewer, query.record_id)
    assert "Similar by the served embedding (default)" in page.inner_text("#similar-by")
    default_ids = _neighbour_ids(page)
    page.select_option("#similar_by", "rhythm")
    page.click("#search-button")
    page.wait_for_selector("#query-label")
    assert page.inner_text("#similar-by") == "Similar by the rhythm view."
    assert page.locator("#similar_by").input_value() == "rhythm"
    ids = _neighbour_ids(page)
    assert ids and query.record_id not in ids and ids != default_ids


def test_an_uploaded_ecg_stored_in_three_formats_is_one_ecg(
    page: Page,
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    launch_service: Callable[..., Iterator[Service]],
    launch_viewer: Callable[..., Viewer],
) -> None:
    """The HL7 aECG example is stored three times (aECG, SCP-ECG and DICOM exports of one ECG): its
    upload names the stored record and none of the three fills a neighbour's place."""
    root = tmp_path_factory.mktemp("one-ecg")
    service = launch_service(root, data_dir / "ptb-xl", 12, hospital=data_dir / "hospital")
    served = next(service)
    viewer = launch_viewer(served.target, root / "home", "--token-file", str(served.token_file))
    try:
        copies = [p for p in served.payloads if p.duplicate_of is not None]
        originals = {p.duplicate_of for p in copies}
        one_ecg = {p.record_id for p in copies} | originals
        assert len(one_ecg) >= 3  # the store knows the three files are one ECG
        page.goto(viewer.url + "/")
        page.set_input_files("#ecg-file", str(data_dir / "hospital" / "hl7aecg_Example_aECG.xml"))
        page.click("#upload-button")
        page.wait_for_selector("#query-label")
        stored = page.inner_text("#query-stored a")
        assert stored in one_ecg
        original = next((p.duplicate_of for p in copies if p.record_id == stored), stored)
        this_ecg = {original} | {p.record_id for p in copies if p.duplicate_of == original}
        assert len(this_ecg) >= 3  # aECG, SCP-ECG and DICOM (other copy groups may be neighbours)
        ids = _neighbour_ids(page)
        assert ids and not set(ids) & this_ecg
    finally:
        viewer.close()
        service.close()
