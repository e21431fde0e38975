"""`report X --html PAGE.html`: one self-contained page from a crosscheck file (the zoo's digits model and its
int8 variant) or a result file, every number and picture checked against the stored rows, hostile strings
escaped, and the page loaded in a real headless Chromium (no console error, nothing fetched, not blank)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import random
import shutil
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from onnxattack.cli.main import main
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class Page(HTMLParser):
    """What the tests look at: the tables (class, rows of cell texts), the images, every URL-bearing attribute,
    the example headings and the scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.headings: list[str] = []
        self.scripts = 0
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for key in ("src", "href", "action", "srcset", "data", "poster"):
            if attributes.get(key) is not None:
                self.urls.append(attributes[key])
        if tag == "script":
            self.scripts += 1
        elif tag == "img":
            self.images.append(attributes.get("src") or "")
        elif tag == "table":
            self.tables.append((attributes.get("class") or "", []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []
        elif tag == "h3":
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1][1]:
            self.tables[-1][1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "h3" and self._heading is not None:
            self.headings.append(" ".join("".join(self._heading).split()))
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)

    def matrices(self) -> list[list[list[str]]]:
        return [rows for css, rows in self.tables if css == "matrix"]


def decoded_png(uri: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):]))) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def check(zoo_model, zoo_inputs, tmp_path_factory):
    """A crosscheck of the zoo's digits model and its int8 variant on 3 inputs."""
    folder = tmp_path_factory.mktemp("check")
    np.save(folder / "x.npy", zoo_inputs("digits-mosaic", 3))
    out = folder / "check.h5"
    result = invoke("crosscheck", zoo_model("digits-mosaic"), folder / "x.npy", "-o", out, "--variants", "int8",
                    "--method", "ml-deepfool", "--max-iter", "10", "--quiet")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def validated(zoo_model, zoo_inputs, tmp_path_factory):
    """An ordinary result file of the yeast MLP (flat inputs), validated on its int8 build."""
    folder = tmp_path_factory.mktemp("run")
    np.save(folder / "x.npy", zoo_inputs("yeast-mlp", 3))
    out = folder / "r.h5"
    assert invoke("attack", zoo_model("yeast-mlp"), folder / "x.npy", "-o", out, "--method", "ml-deepfool",
                  "--max-iter", "10", "--range", "-1", "1", "--quiet").exit_code == 0
    assert invoke("validate", out, "--model", zoo_model("yeast-mlp-int8")).exit_code == 0
    return out


def names_of(labels: list[str], row: np.ndarray) -> str:
    chosen = [labels[i] for i in np.flatnonzero(row == 1)]
    return "{" + ", ".join(chosen) + "}" if chosen else "\u2205"


def test_the_crosscheck_page_shows_the_stored_matrices_pairs_and_pictures(check, tmp_path):
    html = tmp_path / "new folder" / "report.html"
    result = invoke("report", check, "--html", html, "--examples", "2")
    assert result.exit_code == 0, result.output
    assert f"page: {html}" in result.output and "transfer success" in result.output  # the terminal tables too
    text = html.read_text(encoding="utf-8")
    page = Page(text)
    assert page.scripts == 0 and all(url.startswith("data:") for url in page.urls), page.urls
    with h5py.File(check, "r") as handle:
        names = json.loads(handle.attrs["models"])
        stored = [handle["agreement/equal"][:], handle["agreement/max_score_diff"][:], handle["transfer/success"][:]]
        runs = {name: {key: handle[f"models/{name}/run/{key}"][:] for key in ("x", "x_adv", "y_target", "attacked",
                                                                               "success")} for name in names}
        reached = {(a, b): handle[f"models/{a}/run/transfer/{b}/success"][:] for a in names for b in names if a != b}
        labels = json.loads(handle["models/int8/run"].attrs["labels"])
        versions = json.loads(handle[f"models/{names[0]}/run"].attrs["versions"])
        mappings = [json.loads(handle[f"models/{name}"].attrs["input_mapping"])["description"] for name in names]
    assert names == ["digits-mosaic", "int8"]
    matrices = page.matrices()
    assert len(matrices) == 3
    for table, matrix, percent in zip(matrices, stored, (True, False, True), strict=True):
        assert table[0][1:] == names and [row[0] for row in table[1:]] == names
        for i in range(len(names)):
            for j in range(len(names)):
                want = "\u2013" if np.isnan(matrix[i, j]) else (f"{matrix[i, j]:.1%}" if percent
                                                               else f"{matrix[i, j]:.3g}")
                assert table[1 + i][1 + j] == want, (i, j)
    for piece in (*mappings, versions["onnxruntime"], "10 labels matched by names", "int8"):
        assert piece in text
    # Per crafting model: 2 examples, each with its clean / adversarial / perturbation images and one verdict
    # row per model whose "target reached" is the stored verdict of that pair.
    verdict_tables = [rows for css, rows in page.tables if rows and rows[0][:2] == ["model", "target reached"]]
    headings = [heading for heading in page.headings if heading.startswith("input #")]
    assert len(headings) == len(verdict_tables) == 2 * len(names) and len(page.images) == 3 * len(verdict_tables)
    for k, (heading, rows) in enumerate(zip(headings, verdict_tables, strict=True)):
        source = names[k // 2]
        index = int(heading.split("#")[1].split(":")[0])
        run = runs[source]
        assert run["attacked"][index] and f"target {names_of(labels, run['y_target'][index])}," in heading
        judged = {row[0].replace("(crafted on)", "").strip(): row[1] for row in rows[1:]}
        assert judged[source] == ("yes" if run["success"][index] else "no")
        for other in names:
            if other != source:
                assert judged[other] == ("yes" if reached[(source, other)][index] else "no"), (source, other)
        clean_png = decoded_png(page.images[3 * k])
        x, x_adv = run["x"][index, 0].astype(np.float64), run["x_adv"][index, 0].astype(np.float64)
        low, high = min(x.min(), x_adv.min()), max(x.max(), x_adv.max())
        scale = clean_png.shape[0] // x.shape[0]
        assert scale >= 2 and clean_png.shape[:2] == (x.shape[0] * scale, x.shape[1] * scale)
        grey = np.clip(np.rint((x - low) / (high - low) * 255), 0, 255)
        assert np.array_equal(clean_png[::scale, ::scale, 0], grey)  # the stored row, drawn pixel for pixel


def test_report_prints_a_crosscheck_file_and_refuses_png_for_it(check, tmp_path):
    result = invoke("report", check, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    with h5py.File(check, "r") as handle:
        assert np.allclose(np.array(summary["transfer"], dtype=float), handle["transfer/success"][:], equal_nan=True)
        assert np.allclose(np.array(summary["agreement"], dtype=float), handle["agreement/equal"][:], equal_nan=True)
    refused = CliRunner().invoke(main, ["report", str(check), "--png", str(tmp_path / "f.png")])
    assert refused.exit_code == 2 and "--html" in refused.output and len(refused.output.splitlines()) == 1
    assert not (tmp_path / "f.png").exists()


HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'


def hostile_copy(check: Path, folder: Path) -> Path:
    """The check file with names, paths and metadata that would run a script or fetch if not escaped."""
    copy = folder / "hostile.h5"
    shutil.copy(check, copy)
    with h5py.File(copy, "r+") as handle:
        handle.attrs["target"] = "</title><script>alert(3)</script>"
        handle.attrs["method"] = '<link rel="stylesheet" href="http://example.invalid/x.css">'
        handle["models/int8"].attrs["path"] = HOSTILE
        handle["models/int8"].attrs["reason"] = HOSTILE
        for name in ("digits-mosaic", "int8"):
            run = handle[f"models/{name}/run"]
            labels = json.loads(run.attrs["labels"])
            labels[0] = HOSTILE
            run.attrs["labels"] = json.dumps(labels)
            run.attrs["notes"] = json.dumps([HOSTILE])
            run.attrs["model_name"] = "<iframe src='http://example.invalid'></iframe>"
    return copy


def test_strings_from_the_file_are_escaped(check, tmp_path):
    html = tmp_path / "hostile.html"
    assert invoke("report", hostile_copy(check, tmp_path), "--html", html).exit_code == 0
    text = html.read_text(encoding="utf-8")
    page = Page(text)
    assert page.scripts == 0 and all(url.startswith("data:") for url in page.urls), page.urls
    lowered = text.lower()
    for raw in ("<script", "<img src=x", "<iframe", '<link rel="stylesheet"', "</title><script"):
        assert raw not in lowered
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "&lt;/title&gt;&lt;script&gt;" in text


def test_a_result_file_gets_a_page_with_its_summary_plots_and_validations(validated, tmp_path):
    html = tmp_path / "run.html"
    result = invoke("report", validated, "--html", html, "--png", tmp_path / "run.png", "--examples", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run.png").is_file() and html.is_file()  # --png keeps working beside --html
    text = html.read_text(encoding="utf-8")
    page = Page(text)
    with h5py.File(validated, "r") as handle:
        attacked = int(handle["attacked"][:].sum())
        success = int((handle["success"][:] & handle["attacked"][:]).sum())
        transfer = {name: dict(group.attrs) for name, group in handle["transfer"].items()}
    assert f"({success}/{attacked})" in text and not page.images  # flat inputs: plots, not images
    assert text.count("<svg") == 1 + min(2, attacked)  # the L2 histogram and one plot per example
    (name, rates), = transfer.items()
    validations = next(rows for _, rows in page.tables if rows and rows[0][0] == "model" and rows[0][1] == "success")
    assert validations[1][:2] == [name, f"{rates['success_rate']:.1%}"]
    examples = [rows for _, rows in page.tables if rows and rows[0][:2] == ["model", "target reached"]]
    assert len(examples) == min(2, attacked) and all(len(rows) == 3 for rows in examples)  # own + validated model


def _scores_kept_in_another_file(handle: h5py.File, name: str) -> None:
    """Replace a dataset by one whose values live in a file beside it (HDF5 external raw storage)."""
    shape, dtype = handle[name].shape, handle[name].dtype
    secret = Path(handle.filename).with_name("secret.bin")
    secret.write_bytes(np.full(shape, 7, dtype).tobytes())
    del handle[name]
    handle.create_dataset(name, shape=shape, dtype=dtype, external=[(secret.name, 0, secret.stat().st_size)])


@pytest.mark.parametrize("edit,words", [
    (lambda handle: handle.attrs.__setitem__("models", "not json"), "models"),
    (lambda handle: (handle.__delitem__("transfer/success"),
                     handle.create_dataset("transfer/success", data=np.zeros((3, 3)))), "[2, 2]"),
    (lambda handle: handle.__delitem__("models/int8/scores"), "models/int8/scores is not a dataset"),
    (lambda handle: _scores_kept_in_another_file(handle, "models/int8/scores"), "other files"),
    (lambda handle: _scores_kept_in_another_file(handle, "transfer/success"), "other files"),
])
def test_a_damaged_crosscheck_file_is_one_line_and_no_page(check, tmp_path, edit, words):
    copy = tmp_path / "damaged.h5"
    shutil.copy(check, copy)
    with h5py.File(copy, "r+") as handle:
        edit(handle)
    result = CliRunner().invoke(main, ["report", str(copy), "--html", str(tmp_path / "p.html")])
    assert result.exit_code == 2 and words in result.output and len(result.output.splitlines()) == 1, result.output
    assert not (tmp_path / "p.html").exists() and not list(tmp_path.glob(".p.html*"))


JUNK = ["", "{", "[1, 2]", "null", 7, -1, "nan", '{"a": 1}', '["x"]', 1.5, True, '[["a"]]', '{"pairs": 3}']


def mutate(path: Path, rng: random.Random) -> str:
    """One hand edit: an object deleted, an attribute set to junk, or a dataset replaced by one of another
    shape or type (NaN labels, text, one row)."""
    with h5py.File(path, "r+") as handle:
        names: list[str] = []
        handle.visit(names.append)
        kind = rng.randrange(4)
        if kind == 0:
            target = rng.choice(names)
            del handle[target]
            return f"del {target}"
        if kind == 1:
            owner = handle[rng.choice(names)] if rng.random() < 0.7 else handle
            if len(owner.attrs):
                key, value = rng.choice(sorted(owner.attrs)), rng.choice(JUNK)
                owner.attrs[key] = value
                return f"{owner.name}.{key} = {value!r}"
        if kind == 2:
            target = rng.choice([name for name in names if isinstance(handle[name], h5py.Dataset)])
            shape = handle[target].shape
            del handle[target]
            data = rng.choice([np.zeros(1), np.full(shape, np.nan), np.array([b"x", b"y"]),
                               np.zeros(shape[:1] + (3,) * (len(shape) - 1))])
            handle.create_dataset(target, data=data)
            return f"{target} replaced by {data.dtype} {list(data.shape)}"
        key, value = rng.choice(["models", "labels", "reference", "n_inputs", "kind"]), rng.choice(JUNK)
        handle.attrs[key] = value
        return f"/.{key} = {value!r}"


def test_hand_edited_files_give_a_page_or_one_line(check, validated, tmp_path):
    """A bounded fuzz: every edit ends in a page (exit 0) or one line (exit 2), never a traceback, and a
    refusal leaves no page."""
    outcomes = []
    for index in range(40):
        rng = random.Random(index)
        copy = tmp_path / f"m{index}.h5"
        shutil.copy(check if index % 4 else validated, copy)
        recipe = [mutate(copy, rng) for _ in range(rng.randrange(1, 3))]
        html = tmp_path / f"m{index}.html"
        result = CliRunner().invoke(main, ["report", str(copy), "--html", str(html)])
        outcomes.append(result.exit_code)
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not crashed and result.exit_code in (0, 2), (recipe, result.output, result.exception)
        assert result.exit_code == 0 or (len(result.output.splitlines()) == 1 and not html.exists()), recipe
    assert outcomes.count(2) >= 8 and outcomes.count(0) >= 8  # the edits reach the checks, and not all are fatal


def test_the_page_path_is_checked_before_any_work(check, tmp_path):
    named_html = tmp_path / "check.html"  # a check file that happens to end in .html: never overwritten by its page
    shutil.copy(check, named_html)
    for source, target, words in [(named_html, named_html, "also an input"), (check, tmp_path / "page.txt", ".html")]:
        result = CliRunner().invoke(main, ["report", str(source), "--html", str(target)])
        assert result.exit_code == 2 and words in result.output and len(result.output.splitlines()) == 1
    assert named_html.read_bytes() == check.read_bytes()
    (tmp_path / "real.html").write_text("mine")
    (tmp_path / "link.html").symlink_to(tmp_path / "real.html")
    result = CliRunner().invoke(main, ["report", str(check), "--html", str(tmp_path / "link.html")])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert (tmp_path / "real.html").read_text() == "mine"
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not a result file")
    result = CliRunner().invoke(main, ["report", str(not_hdf5), "--html", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1 and not (tmp_path / "x.html").exists()


# --- a real browser -------------------------------------------------------------------------------
def browser_or_skip():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed (pip install 'onnxattack[dev]')")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium package: `make install` adds it where apt-get "
                    f"works)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


def load_in_chromium(html: Path, screenshot: Path) -> tuple[list[str], list[str]]:
    """Open the page from disk in headless Chromium; return its console errors and page errors, and every
    request other than the page itself and inline data."""
    sync_playwright = browser_or_skip()
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS, headless=True)
        except Exception as exc:  # a Chromium that cannot start here (no shared memory, ...) cannot judge the page
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(exc).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"failed request: {request.url}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(html.as_uri(), wait_until="load")
            page.wait_for_timeout(300)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    own = html.as_uri()
    return problems, [url for url in requests if url != own and not url.startswith("data:")]


def assert_not_blank(screenshot: Path) -> None:
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    assert width >= 1000 and height >= 900
    colours = np.unique(pixels.reshape(-1, 3)[:: max(1, pixels.size // 3 // 200_000)], axis=0)
    assert len(colours) > 50  # text, heatmap cells, images: not one flat colour
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # a real share of the page is drawn


def test_the_pages_load_in_headless_chromium_without_errors_or_fetches(check, validated, tmp_path):
    browser_or_skip()
    pages = {"check": (check, tmp_path / "check.html"), "hostile": (hostile_copy(check, tmp_path),
                                                                    tmp_path / "hostile.html"),
             "run": (validated, tmp_path / "run.html")}
    for name, (source, html) in pages.items():
        assert invoke("report", source, "--html", html).exit_code == 0
        problems, fetched = load_in_chromium(html, tmp_path / f"{name}.png")
        assert problems == [] and fetched == [], (name, problems, fetched)
        assert_not_blank(tmp_path / f"{name}.png")
