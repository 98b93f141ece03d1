"""The browser app (``python -m SPDSegmentLib serve``) in a real Chromium, on the CPU.

One server subprocess (``--port 0``) on a temporary data folder that holds a 12-slice slab of the
real chest CTA; each test opens its own page, hence its own session. Screenshots are kept under
``$SPDSEGMENT_ARTEFACTS`` (or pytest's temporary folder); one is copied to /tmp/web_screenshot.png.

Needs Debian's Chromium (``apt-get install -y --no-install-recommends chromium``): playwright's own
browser download does not work on these machines, so the test fails (never skips) without it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from _helpers import crop_slices

from SPDSegmentLib.io import (
    markups_document,
    read_markups,
    read_segmentation,
    read_volume,
    write_markups,
    write_volume,
)

SLAB = (100, 112)  # axial slices of the CTA: both aortic crossings on every slice
RUN_SLICES = (5, 6)  # slab slices the run's centerline visits (6 processed slices with context 2)
SERVER_START_S = 120
RUN_TIMEOUT_S = 150
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-default-apps", "--no-first-run"]


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = os.environ.get("SPDSEGMENT_ARTEFACTS")
    path = Path(folder) / "web" if folder else tmp_path_factory.mktemp("web-artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def web_data(cta, tmp_path_factory) -> dict:
    """The data folder: the slab, a second (different) slab, and point-list centerlines on the aorta."""
    from scipy import ndimage

    volume, label = cta
    slab = crop_slices(volume, *SLAB)
    slab_label = label[SLAB[0]:SLAB[1]]
    folder = tmp_path_factory.mktemp("web-data")
    write_volume(slab, folder / "slab.nrrd")
    from SPDSegmentLib.evaluation import sample_data

    shutil.copytree(sample_data.path("abdomen_ct_dicom/image"), folder / "dicom_series")  # 20 CT slices

    def aorta_point(k: int) -> np.ndarray:
        """RAS of the centre of the larger aortic crossing on slab slice k (the descending aorta)."""
        parts, n = ndimage.label(slab_label[k])
        sizes = ndimage.sum(slab_label[k], parts, range(1, n + 1))
        j, i = ndimage.center_of_mass(parts == int(np.argmax(sizes)) + 1)
        return slab.ijk_to_ras_points([[i, j, k]])[0]

    run_points = np.array([aorta_point(k) for k in RUN_SLICES])
    write_markups(folder / "run.mrk.json", markups_document("Fiducial", "run", run_points))
    long_points = np.array([aorta_point(k) for k in range(0, 12, 2)])
    write_markups(folder / "long.mrk.json", markups_document("Fiducial", "long", long_points))
    gap_points = np.array([aorta_point(k) for k in (0, 1, 2, 9, 10, 11)])  # slices 5-6: > n = 2 from any point
    write_markups(folder / "gap.mrk.json", markups_document("Fiducial", "gap", gap_points))
    return {"folder": folder, "slab": read_volume(folder / "slab.nrrd"), "run_points": run_points}


@pytest.fixture(scope="module")
def server(web_data, artefacts):
    """``serve`` in a subprocess on a free port; the tests fail if it dies."""
    log = (artefacts / "server.log").open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "SPDSegmentLib.frontends.web.app", "--port", "0", "--host", "127.0.0.1",
           "--data", str(web_data["folder"]), "--max-upload-mb", "1", "--idle-minutes", "10", "--device", "cpu",
           "--max-sessions", "12"]  # one session per page the tests open (closed pages keep theirs until idle)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    url = None
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        if line.startswith("SPDSegment web app: "):
            url = line.split()[3].rstrip("/")
    if url is None:
        proc.kill()
        pytest.fail(f"the server did not start; see {artefacts / 'server.log'}")
    yield {"url": url, "proc": proc, "log": artefacts / "server.log"}
    alive = proc.poll() is None
    stopping = time.monotonic()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.write(f"\n[test] server stopped {time.monotonic() - stopping:.1f} s after SIGTERM\n")
    log.close()
    assert alive, f"the server died during the tests (exit {proc.returncode}); see {artefacts / 'server.log'}"


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is not installed: run `apt-get install -y --no-install-recommends chromium` "
                    "(playwright's own browser download does not work on these machines)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def engine_mask(web_data):
    """The engine's own output for the run's centerline on the same file: the reference for the page."""
    from SPDSegmentLib.method.checks import preflight
    from SPDSegmentLib.method.pipeline import SegmentParams, segment
    from SPDSegmentLib.method.saliency import load_prior
    from SPDSegmentLib.sam.backend import load_backend

    volume = web_data["slab"]
    centerline = read_markups(web_data["folder"] / "run.mrk.json")
    params = SegmentParams(method="spd", tau=None, intensity_preset="auto")
    checked = preflight(volume, centerline, params)
    backend = load_backend("litemedsam", None, "cpu", None, runtime="auto")
    result = segment(checked.volume, centerline, backend, load_prior("sam-track", backend), params, checked=checked)
    return result.mask


# --- helpers ---------------------------------------------------------------------------------------
def session_root(page) -> str:
    """``http://host:port/s/<token>/`` of the page's session."""
    url = page.url
    head, _, rest = url.partition("/s/")
    return f"{head}/s/{rest.split('/')[0]}/"


def scene(page) -> dict:
    with urllib.request.urlopen(session_root(page) + "api/scene", timeout=30) as reply:
        return json.loads(reply.read())


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def axial_view(page):
    """The axial (Red) view's image: the first view of the axial-primary layout."""
    return page.locator(".remote-controlled-area img").first


def view_pixels(page, path: Path | None = None, mode: str = "L") -> np.ndarray:
    """The axial view as the page shows it (grey levels, or RGB with mode="RGB")."""
    from PIL import Image

    png = axial_view(page).screenshot(path=str(path) if path else None)
    return np.asarray(Image.open(io.BytesIO(png)).convert(mode), dtype=float)


def shows_ct(pixels: np.ndarray) -> bool:
    """A CT slice, not a black or uniform area: many non-black pixels with real contrast."""
    return float((pixels > 20).mean()) > 0.3 and float(pixels.std()) > 20


@pytest.fixture
def open_page(chromium, server, artefacts):
    """``open_page(name)``: a new page on a new session, its views showing the CT; closed after the test."""
    pages = []

    def opener(name: str):
        page = _open_page(chromium, server, artefacts, name)
        pages.append(page)
        return page

    yield opener
    for page in pages:
        if not page.is_closed():
            page.close()


def _open_page(chromium, server, artefacts: Path, name: str):
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"] + "/")
    page.wait_for_selector("#spd-volume-name", timeout=60_000)
    wait_for(lambda: shows_ct(view_pixels(page)), 60, "the axial view to show the CT")
    wait_for(lambda: scene(page)["views_fitted"], 30, "the views to take the page's size")
    page.screenshot(path=str(artefacts / f"{name}-opened.png"))
    return page


def ras_to_page(page, ras) -> tuple[float, float]:
    """Page pixel of a RAS point in the axial view (inverse of the slice node's XY -> RAS)."""
    red = scene(page)["views"]["Red"]
    box = axial_view(page).bounding_box()
    width, height = red["dimensions"][:2]
    xy = np.linalg.solve(np.asarray(red["xy_to_ras"]), [*ras, 1.0])
    return box["x"] + xy[0] * box["width"] / width, box["y"] + (height - xy[1]) * box["height"] / height


def expected_ras(page, px: float, py: float) -> np.ndarray:
    """RAS that a click at page pixel (px, py) should give, from the view geometry alone."""
    red = scene(page)["views"]["Red"]
    box = axial_view(page).bounding_box()
    width, height = red["dimensions"][:2]
    x = (px - box["x"]) * width / box["width"]
    y = height - (py - box["y"]) * height / box["height"]
    return (np.asarray(red["xy_to_ras"]) @ [x, y, 0.0, 1.0])[:3]


def choose(page, select_id: str, option: str) -> None:
    page.locator(f".v-field:has(#{select_id})").click()
    page.get_by_role("option", name=option, exact=True).click()


def message(page) -> str:
    return scene(page)["message"]


def load_centerline(page, name: str) -> None:
    choose(page, "spd-cl-load-choice", name)
    page.click("#spd-cl-load")
    wait_for(lambda: scene(page)["centerline"]["class"] == "vtkMRMLMarkupsFiducialNode", 20, "the centerline")


def run_to_end(page, timeout: float = RUN_TIMEOUT_S) -> dict:
    before = scene(page)["segments"]
    page.click("#spd-run")
    # a run whose slices are all cached can end between two polls: a new segment also shows it ran
    wait_for(lambda: (s := scene(page))["running"] or s["segments"] != before, 20, "the run to start")
    return wait_for(lambda: (s := scene(page)) and not s["running"] and s, timeout, "the run to finish", 1.0)


def drag(page, path: list[tuple[float, float]]) -> None:
    """Press at the first point, move through the others, release (a paint stroke, a scissors outline)."""
    page.mouse.move(*path[0])
    page.mouse.down()
    for point in path[1:]:
        page.mouse.move(*point, steps=4)
        page.wait_for_timeout(50)
    page.mouse.up()


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --- tests -----------------------------------------------------------------------------------------
def test_data_folder_refuses_paths_that_leave_it(tmp_path):
    from SPDSegmentLib.frontends.web.data_folder import (
        DataFolder,
        DataPathError,
        safe_file_name,
    )

    root = tmp_path / "data"
    folder = DataFolder(root)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    for bad in ("../x.seg.nrrd", "/etc/passwd", "a/../../x", "link/x.seg.nrrd", ""):
        with pytest.raises(DataPathError):
            folder.for_writing(bad, ".seg.nrrd", overwrite=False)
    assert folder.for_writing("sub/ok", ".seg.nrrd", overwrite=False) == root / "sub" / "ok.seg.nrrd"
    for bad in ("..", ".hidden", "a\x00b", "-rf", "a;b", "$(x)"):
        with pytest.raises(DataPathError):
            safe_file_name(bad)
    assert safe_file_name("C:\\Users\\me\\scan 1.nrrd") == "scan 1.nrrd"
    assert safe_file_name("folder/image (2).nii.gz") == "image (2).nii.gz"


def test_page_shows_the_ct_and_window_presets(open_page, artefacts):
    page = open_page("load")
    pixels = view_pixels(page, artefacts / "axial-view.png")
    assert shows_ct(pixels), "the axial slice view is blank"
    described = scene(page)
    assert described["volume"]["name"] == "slab" and described["volume"]["dimensions"] == [120, 126, 12]
    assert {v["orientation"] for v in described["views"].values()} == {"Axial", "Coronal", "Sagittal"}
    assert page.locator(".remote-controlled-area img").count() == 4, "three slice views and a 3-D view"
    choose(page, "spd-wl-preset", "CT lung")
    wait_for(lambda: scene(page)["volume"]["window_level"] == [1400.0, -500.0], 10, "the lung window")

    def redrawn():
        now = view_pixels(page)
        return (now,) if np.abs(now - pixels).mean() > 3 else None

    (lung,) = wait_for(redrawn, 15, "the view to change with the window")
    assert shows_ct(lung)


def test_clicks_place_points_where_the_view_geometry_says(open_page, artefacts, web_data):
    page = open_page("clicks")
    assert scene(page)["placing"], "place mode is on once the page is connected"
    box = axial_view(page).bounding_box()
    targets = [(box["x"] + 0.5 * box["width"], box["y"] + 0.4 * box["height"]),
               (box["x"] + 0.31 * box["width"], box["y"] + 0.62 * box["height"])]
    for count, (px, py) in enumerate(targets, start=1):
        page.mouse.click(px, py)
        wait_for(lambda n=count: len(scene(page)["centerline"]["points"]) == n, 20, f"point {count}")
    described = scene(page)
    pixel_mm = abs(described["views"]["Red"]["xy_to_ras"][0][0])
    for (px, py), point in zip(targets, described["centerline"]["points"], strict=True):
        assert np.allclose(point, expected_ras(page, px, py), atol=1.5 * pixel_mm), (point, px, py)
    assert described["centerline"]["class"] == "vtkMRMLMarkupsCurveNode"
    wait_for(lambda: page.inner_text("#spd-cl-points").startswith("2 points"), 10, "the page's point count")
    page.screenshot(path=str(artefacts / "clicks.png"))

    page.click("#spd-place")  # placing off: now a press on a point grabs it
    wait_for(lambda: not scene(page)["placing"], 10, "place mode to end")
    (px, py), moved_to = targets[1], (targets[1][0] + 40, targets[1][1] - 30)
    drag(page, [(px, py), moved_to])
    wait_for(lambda: np.allclose(scene(page)["centerline"]["points"][1], expected_ras(page, *moved_to),
                                 atol=1.5 * pixel_mm), 20, "the dragged point")
    described = scene(page)
    assert len(described["centerline"]["points"]) == 2, "a drag moves a point, it adds none"

    page.fill("#spd-cl-save-name", "clicked")
    page.click("#spd-cl-save")
    saved = web_data["folder"] / "clicked.mrk.json"
    wait_for(lambda: message(page) == "saved 'clicked.mrk.json'", 20, "the save")
    assert np.allclose(read_markups(saved).points_ras, described["centerline"]["points"], atol=1e-3)


def test_run_matches_the_engine_and_saves_a_readable_seg_nrrd(open_page, artefacts, web_data, engine_mask):
    page = open_page("run")
    load_centerline(page, "run.mrk.json")
    loaded = np.asarray(scene(page)["centerline"]["points"])
    assert np.allclose(loaded, web_data["run_points"], atol=1e-4)
    done = run_to_end(page)
    assert done["message_type"] in ("success", "warning"), done["message"]
    assert done["model_loads"] == 1
    assert len(done["segments"]) == 1 and done["segments"][0]["voxels"] == int(engine_mask.sum())
    assert done["prompts"] and set(done["prompts"]) <= {"kept", "rejected", "borrowed", "fallback", "propagated"}
    assert done["saliency"]
    page.wait_for_selector("#spd-run-result", timeout=10_000)
    without = view_pixels(page, mode="RGB")
    page.click("#spd-show-saliency")  # a red-yellow overlay where the prior sees the structure
    wait_for(lambda: (np.abs(view_pixels(page, mode="RGB") - without).max(-1) > 20).mean() > 0.002, 15,
             "the saliency overlay")
    page.click("#spd-show-3d")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(artefacts / "run-result.png"))
    shutil.copyfile(artefacts / "run-result.png", "/tmp/web_screenshot.png")

    page.fill("#spd-seg-save-name", "result")
    page.click("#spd-seg-save")
    saved = web_data["folder"] / "result.seg.nrrd"
    wait_for(lambda: message(page) == "saved 'result.seg.nrrd'", 30, "the save")
    segments = read_segmentation(saved, reference=web_data["slab"])
    assert list(segments) == ["SPD"]
    assert np.array_equal(segments["SPD"].array.astype(bool), engine_mask.astype(bool)), \
        "the page's segment differs from the engine's output for the same points"

    with page.expect_download(timeout=60_000) as download:
        page.click("#spd-seg-download")
    assert download.value.suggested_filename == "result.seg.nrrd"  # named after the "save as" field
    downloaded = artefacts / "downloaded.seg.nrrd"
    download.value.save_as(downloaded)
    again = read_segmentation(downloaded, reference=web_data["slab"])["SPD"].array
    assert np.array_equal(again.astype(bool), engine_mask.astype(bool))


def test_cancel_leaves_the_scene_unchanged(open_page, artefacts):
    page = open_page("cancel")
    load_centerline(page, "long.mrk.json")
    before = scene(page)["nodes"]
    page.click("#spd-run")
    wait_for(lambda: (s := scene(page))["running"] and s["progress"] > 0, 60, "the run to make progress", 0.2)
    page.click("#spd-cancel")
    after = wait_for(lambda: (s := scene(page)) and not s["running"] and s, 60, "the run to stop")
    assert "cancelled" in after["message"], after["message"]
    assert after["model_loads"] == 1, "the model is loaded once per server process"
    assert after["nodes"] == before and after["segments"] == [] and after["prompts"] == {}
    page.screenshot(path=str(artefacts / "cancelled.png"))


def test_edit_with_paint_scissors_islands_and_undo(open_page, artefacts, web_data):
    page = open_page("paint")
    page.click("#spd-effect-paint")
    wait_for(lambda: scene(page)["active_effect"] == "paint", 10, "the paint effect")
    assert not scene(page)["placing"], "painting ends place mode"
    box = axial_view(page).bounding_box()
    x, y = box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"]
    drag(page, [(x + 6 * step, y + 3 * step) for step in range(11)])
    painted = wait_for(lambda: (s := scene(page)["segments"]) and s[0]["voxels"] > 0 and s[0]["voxels"], 20,
                       "painted voxels")
    page.screenshot(path=str(artefacts / "painted.png"))

    page.click("#spd-effect-scissors")  # default: erase inside a free-hand outline
    wait_for(lambda: scene(page)["active_effect"] == "scissors", 10, "the scissors effect")
    drag(page, [(x - 40, y - 40), (x + 25, y - 40), (x + 25, y + 40), (x - 40, y + 40), (x - 40, y - 40)])
    cut = wait_for(lambda: 0 < (v := scene(page)["segments"][0]["voxels"]) < painted and v, 20, "the scissors cut")

    page.fill("#spd-seg-save-name", "../escaped")
    page.click("#spd-seg-save")
    wait_for(lambda: "leads out of the data folder" in message(page), 10, "the refusal")
    assert not (web_data["folder"].parent / "escaped.seg.nrrd").exists()

    page.click("#spd-undo")
    wait_for(lambda: scene(page)["segments"][0]["voxels"] == painted, 20, "undo to bring back the cut voxels")
    page.click("#spd-undo")
    wait_for(lambda: scene(page)["segments"][0]["voxels"] == 0, 20, "undo to remove the paint")
    page.click("#spd-redo")
    wait_for(lambda: scene(page)["segments"][0]["voxels"] == painted, 20, "redo to restore it")

    before = message(page)
    page.click("#spd-effect-islands")  # keep the largest island: the one stroke stays whole
    page.click("#spd-islands-apply")
    page.wait_for_timeout(1000)
    assert scene(page)["segments"][0]["voxels"] == painted and message(page) == before
    assert cut < painted


def test_two_pages_have_separate_scenes(open_page, artefacts):
    first = open_page("isolation-a")
    second = open_page("isolation-b")
    assert session_root(first) != session_root(second)
    choose(second, "spd-volume-choice", "dicom_series/ (DICOM)")
    second.click("#spd-volume-open")
    wait_for(lambda: scene(second)["volume"]["dimensions"] == [512, 512, 20], 60, "the second page's DICOM volume")
    box = axial_view(first).bounding_box()
    first.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    wait_for(lambda: len(scene(first)["centerline"]["points"]) == 1, 20, "the first page's point")
    a, b = scene(first), scene(second)
    assert a["volume"]["name"] == "slab" and a["volume"]["dimensions"][2] == 12
    assert b["volume"]["dimensions"] == [512, 512, 20]
    assert b["centerline"]["points"] == [], "a click in one page placed a point in the other"
    wait_for(lambda: first.inner_text("#spd-volume-name") == "slab", 10, "the first page's volume name")
    wait_for(lambda: second.inner_text("#spd-volume-name") == b["volume"]["name"] != "slab", 10,
             "the second page's volume name")
    first.screenshot(path=str(artefacts / "isolation-a.png"))
    second.screenshot(path=str(artefacts / "isolation-b.png"))


def test_uploads_load_and_bad_uploads_give_a_message(open_page, server, artefacts, web_data):
    page = open_page("upload")
    broken = b"NRRD0004\ntype: short\ndimension: 3\n" + b"\x00" * 99  # a header cut short
    page.set_input_files("#spd-upload-files", files=[{"name": "broken.nrrd", "mimeType": "application/octet-stream",
                                                       "buffer": broken}])
    wait_for(lambda: "could not read" in page.inner_text("#spd-message"), 30, "the bad-file message in the page")
    assert scene(page)["volume"]["name"] == "slab", "a bad upload must leave the open volume alone"
    page.screenshot(path=str(artefacts / "bad-upload.png"))

    too_big = 1536 * 1024  # the server runs with --max-upload-mb 1
    page.set_input_files("#spd-upload-files", files=[{"name": "big.nrrd", "mimeType": "application/octet-stream",
                                                       "buffer": b"\x00" * too_big}])
    wait_for(lambda: "upload refused" in page.inner_text("#spd-message"), 20, "the size refusal in the page")
    body, content_type = multipart("big.nrrd", b"\x00" * too_big)  # past the page's own check
    request = urllib.request.Request(session_root(page) + "upload", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413

    with urllib.request.urlopen(server["url"] + "/healthz", timeout=10) as reply:
        assert json.loads(reply.read())["ok"]
    assert server["proc"].poll() is None
    assert shows_ct(view_pixels(page)), "the page still works after the bad uploads"

    good = (web_data["folder"] / "slab.nrrd").read_bytes()
    page.set_input_files("#spd-upload-files", files=[{"name": "uploaded.nrrd", "mimeType": "application/octet-stream",
                                                       "buffer": good}])
    wait_for(lambda: scene(page)["volume"]["name"] == "uploaded", 30, "the uploaded volume")
    page.set_input_files("#spd-upload-files", files=[{"name": "line.mrk.json", "mimeType": "application/json",
                                                       "buffer": (web_data["folder"] / "run.mrk.json").read_bytes()}])
    wait_for(lambda: len(scene(page)["centerline"]["points"]) == len(RUN_SLICES), 30, "the uploaded centerline")
    assert shows_ct(view_pixels(page))


def test_fill_gaps_off_reaches_the_run_and_leaves_the_gap_empty(open_page, artefacts):
    """The "fill gaps" box (on by default): unticked, the slices of a gap longer than the borrowing
    window get no prompt, so the second run's segment is smaller than the first's."""
    page = open_page("fill-gaps")
    load_centerline(page, "gap.mrk.json")
    assert page.is_checked("#spd-propagate")
    filled = run_to_end(page)
    assert filled["message_type"] in ("success", "warning"), filled["message"]
    assert filled["run_params"]["propagate"] is True
    page.click("#spd-propagate")
    wait_for(lambda: not page.is_checked("#spd-propagate"), 10, "the box to clear")
    empty = run_to_end(page)
    assert empty["message_type"] in ("success", "warning"), empty["message"]
    assert empty["run_params"]["propagate"] is False, "the box's state reached the run"
    voxels = [s["voxels"] for s in empty["segments"]]
    assert len(voxels) == 2 and 0 < voxels[1] < voxels[0], voxels
    page.screenshot(path=str(artefacts / "fill-gaps-off.png"))


def test_the_solid_organ_box_reaches_the_run(open_page, artefacts):
    """The "solid organ" box (off by default) sets the run's wider window where the structure is thick
    (``thick_context``); it is greyed out for prompts other than spd, which ignore it."""
    from SPDSegmentLib.frontends.web.run_panel import THICK_CONTEXT

    page = open_page("solid-organ")
    load_centerline(page, "run.mrk.json")
    assert not page.is_checked("#spd-thick")
    page.click("#spd-thick")
    wait_for(lambda: page.is_checked("#spd-thick"), 10, "the box to tick")
    done = run_to_end(page)
    assert done["message_type"] in ("success", "warning"), done["message"]
    assert done["run_params"]["thick_context"] == THICK_CONTEXT, "the box's state reached the run"
    choose(page, "spd-method", "raw")
    wait_for(lambda: page.is_disabled("#spd-thick"), 10, "the box to grey out for raw prompts")
    page.screenshot(path=str(artefacts / "solid-organ.png"))
