"""Own handwriting: image preparation, ``predict`` on image files, ``export`` with parity, ``serve`` in a browser.

A small CNN (tests/tiny_models.py) is trained once per session on the real MNIST through the console script; the
"handwriting" is real MNIST test digits written large, off-centre, in coloured ink on tinted paper, as JPEGs.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import REPO, run_cli
from digit_helpers import huge_png, jpeg_claiming, python_path, serving
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from tiny_models import TinyAttentionClassifier, TinyCNNClassifier

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.cli.main import main
from mnist_lightning.data import normalize
from mnist_lightning.data.images import (
    MAX_PIXELS,
    ImageInputError,
    load_digit,
    load_digits,
    prepare_digit,
)

# the tiny test classifiers live outside the package: commands must be told to trust (import) them
TRUST = ("--model", "tiny_models.TinyCNNClassifier")
LIGHTNING_VERSION = "pytorch-lightning_version"  # Lightning's loader reads it from every checkpoint
pytest_plugins = ["digit_fixtures"]  # cnn_checkpoint, mnist_test: shared with test_serve.py, trained once
CHROMIUM_PATHS = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-browser"))


@pytest.fixture(autouse=True)
def tiny_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Console scripts started by these tests can rebuild ``tiny_models.TinyCNNClassifier`` from a checkpoint."""
    monkeypatch.setenv("PYTHONPATH", python_path())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # small batches: one thread wastes far less CPU on 2 shared cores


def write_on_paper(digit: np.ndarray, path: Path, rng: np.random.Generator) -> None:
    """An MNIST digit written 4–6× larger in dark coloured ink, somewhere on a larger sheet of tinted paper."""
    size = 28 * int(rng.integers(4, 7))
    ink = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    width, height = (int(v) for v in rng.integers(size + 40, size + 320, 2))
    paper = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(190, 256, 3)))
    pen = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
    paper.paste(pen, (int(rng.integers(0, width - size)), int(rng.integers(0, height - size))), mask=ink)
    if path.suffix == ".png":  # light ink on a dark, grey background
        paper = Image.eval(paper.convert("L"), lambda v: 255 - v)
        paper.save(path)
    else:
        paper.save(path, "JPEG", quality=int(rng.integers(70, 95)))


def ink_box(digit: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    weights = digit.astype(np.float64)
    rows, cols = np.indices(digit.shape)
    return (weights * rows).sum() / weights.sum(), (weights * cols).sum() / weights.sum()


def similarity(digit: np.ndarray, original: np.ndarray) -> float:
    """Correlation of two digits' pixels, allowing a one-pixel shift (a centre of mass near x.5 rounds either way)."""
    shifted = (np.roll(digit, (dr, dc), axis=(0, 1)) for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    return max(float(np.corrcoef(s.ravel(), original.ravel())[0, 1]) for s in shifted)


def test_prepared_photos_look_like_the_mnist_digits_they_came_from(
    tmp_path: Path, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = mnist_test
    rng = np.random.default_rng(0)
    similarities = []
    for i in range(40):
        path = tmp_path / f"{i}.{'png' if i % 4 == 0 else 'jpg'}"
        write_on_paper(images[i], path, rng)
        digit = load_digit(path)
        assert digit.shape == (28, 28) and digit.dtype == np.uint8 and digit.max() == 255
        assert max(ink_box(digit)) in (19, 20, 21)  # MNIST: longer side 20 (antialiased edges may add or drop one)
        row, col = centre_of_mass(digit)
        assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
        similarities.append(similarity(digit, images[i]))
    assert np.mean(similarities) > 0.97 and min(similarities) > 0.9, similarities

    # the same digit as light-on-dark grey, dark-on-light colour, and a transparent-background drawing agree
    original = images[0]
    light_on_dark = Image.fromarray(original).resize((200, 200))
    dark_on_light = Image.merge("RGB", [Image.eval(light_on_dark, lambda v: 255 - v)] * 3)
    transparent = Image.new("RGBA", (200, 200), (0, 0, 255, 0))
    transparent.putalpha(light_on_dark)
    results = [prepare_digit(image).astype(int) for image in (light_on_dark, dark_on_light, transparent)]
    assert all(np.abs(result - results[0]).max() <= 2 for result in results)


def test_blank_and_unreadable_images_get_their_own_message(tmp_path: Path) -> None:
    Image.new("RGB", (300, 200), (240, 235, 220)).save(tmp_path / "blank.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "notes.txt").write_text("a text file in the folder is not an image and is ignored")
    Image.fromarray(np.pad(np.full((60, 12), 255, np.uint8), 50)).save(tmp_path / "one.png")
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # reading it would wait forever for a writer

    with pytest.raises(ImageInputError, match=r"blank\.jpg: no ink found"):
        load_digit(tmp_path / "blank.jpg")
    files, digits, failed = load_digits([tmp_path, tmp_path / "missing.jpg", tmp_path / "empty", tmp_path / "pipe.png"])
    assert [f.name for f in files] == ["one.png"] and digits.shape == (1, 28, 28)
    messages = dict((p.name, m) for p, m in failed)
    assert set(messages) == {"blank.jpg", "broken.png", "missing.jpg", "empty", "pipe.png"}
    assert "not an image file" in messages["broken.png"] and "no such file" in messages["missing.jpg"]
    assert "not a regular file" in messages["pipe.png"]
    assert "no image files" in messages["empty"]


def test_predict_reads_handwriting_from_image_files(
    isolated: Path,
    cnn_checkpoint: Path,
    mnist_test: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images, labels = mnist_test
    rng = np.random.default_rng(1)
    folder = isolated / "scans"
    folder.mkdir()
    expected = {}
    for i in range(100):  # one in ten is light ink on dark grey PNG, the rest colour JPEGs
        path = folder / f"digit{i:03d}.{'png' if i % 10 == 0 else 'jpg'}"
        write_on_paper(images[i], path, rng)
        expected[str(path)] = int(labels[i])
    Image.new("RGB", (400, 300), (235, 230, 215)).save(folder / "blank.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")

    result = run_cli("predict", "--ckpt_path", str(cnn_checkpoint), *TRUST, "--data.predict_images", str(folder))
    out = isolated / "runs" / "predictions.csv"
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["file", "prediction"] + [f"prob_{k}" for k in range(10)] + ["error"]
    by_file = {row["file"]: row for row in rows}
    assert len(rows) == 102 and set(expected) | {str(folder / "blank.jpg"), str(folder / "broken.jpg")} == set(by_file)
    correct = sum(int(by_file[f]["prediction"]) == label for f, label in expected.items())
    assert correct >= 95, f"{correct}/100 handwritten digits right"
    probs = [float(by_file[str(folder / "digit001.jpg")][f"prob_{k}"]) for k in range(10)]
    assert sum(probs) == pytest.approx(1, abs=1e-4)

    for name, reason in (("blank.jpg", "no ink found"), ("broken.jpg", "could not be read")):
        row = by_file[str(folder / name)]
        assert row["prediction"] == "" and reason in row["error"]
        assert re.search(rf"skipped .*{re.escape(name)}: {reason}", result.stderr), result.stderr

    # only bad images: one error line, exit code 1, no file written (in-process: a second start costs seconds)
    out.unlink()
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--ckpt_path", str(cnn_checkpoint), *TRUST, "--data.predict_images", "nothing.png"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "mnist-lightning: error: nothing.png: no such file"
    assert not out.exists()


def on_paper(digit: np.ndarray, size: int = 280) -> Image.Image:
    """An MNIST digit as dark ink on white paper, ``size`` pixels square."""
    return Image.eval(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), lambda v: 255 - v)


def write_variant(kind: str, digit: np.ndarray, other: np.ndarray, folder: Path) -> Path:
    """``digit`` saved as one of the kinds of file people have: odd colour modes, depths, frames, sizes.

    ``other`` is a second digit, for the frames and pages after the first (which is the one read).
    """
    paper, white_on_black = on_paper(digit), Image.fromarray(digit).resize((280, 280), Image.Resampling.BICUBIC)
    path = folder / kind
    if kind == "palette.png":
        paper.convert("P").save(path)
    elif kind == "sixteen_bit.png":
        Image.fromarray(np.asarray(paper).astype(np.uint16) * 257).save(path)  # Pillow opens it as I;16
    elif kind == "cmyk.jpg":
        paper.convert("CMYK").save(path, quality=95)
    elif kind == "transparent.png":  # blue ink on a transparent canvas, as drawing programs save it
        image = Image.new("RGBA", paper.size, (30, 30, 200, 0))
        image.putalpha(white_on_black)
        image.save(path)
    elif kind == "grey_alpha.png":  # black ink, its edges antialiased by transparency
        Image.merge("LA", [Image.new("L", paper.size, 0), white_on_black]).save(path)
    elif kind == "animated.gif":
        paper.convert("P").save(path, save_all=True, append_images=[on_paper(other).convert("P")], duration=100)
    elif kind == "two_pages.tif":
        paper.save(path, save_all=True, append_images=[on_paper(other)])
    elif kind == "float.tif":
        Image.fromarray(np.asarray(paper, dtype=np.float32) / 255).save(path)
    elif kind == "rotated.jpg":  # stored on its side, EXIF orientation 6 says: turn 90° clockwise to show
        exif = Image.Exif()
        exif[0x0112] = 6
        paper.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    elif kind in ("large.png", "large.jpg"):  # a 27-megapixel scan, the digit 1400 pixels tall in it
        sheet = Image.new("L", (6000, 4500), 235)
        sheet.paste(on_paper(digit, 1400).point(lambda v: min(v, 235)), (2500, 1700))
        sheet.save(path, quality=90) if kind.endswith("jpg") else sheet.save(path)
    else:
        raise ValueError(kind)
    return path


VARIANTS = [
    "palette.png",
    "sixteen_bit.png",
    "cmyk.jpg",
    "transparent.png",
    "grey_alpha.png",
    "animated.gif",
    "two_pages.tif",
    "float.tif",
    "rotated.jpg",
    "large.png",
    "large.jpg",
]


@pytest.mark.parametrize("kind", VARIANTS)
def test_every_kind_of_image_reads_as_the_digit_it_shows(
    kind: str, tmp_path: Path, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = mnist_test
    expected = prepare_digit(Image.fromarray(images[0]).resize((280, 280), Image.Resampling.BICUBIC))
    digit = load_digit(write_variant(kind, images[0], images[1], tmp_path))
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert similarity(digit, expected) > 0.97, f"{kind} does not read as the digit it shows"
    if kind.startswith("large"):  # shrunk before any float arrays were made, still a full MNIST-style digit
        assert max(ink_box(digit)) in (19, 20, 21)


def test_refusing_huge_images_costs_no_memory(tmp_path: Path) -> None:
    """Images over the pixel limit are refused from their header: no decoding, no memory.

    Measured in a fresh process (peak resident memory is per process); a decoded 15000×15000 image alone
    would take 225 MB, and the float arrays made from it 900 MB more.
    """
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(huge_png(15000, 15000))  # over twice Pillow's own limit: it raises
    (folder / "scan.png").write_bytes(huge_png(10000, 10000))  # between Pillow's warning and its error
    (folder / "claims.jpg").write_bytes(jpeg_claiming(60000, 60000))  # only the header says so
    assert max(p.stat().st_size for p in folder.iterdir()) < 100_000 and MAX_PIXELS < 10000 * 10000
    script = """
import json, resource, sys, warnings
from mnist_lightning.data.images import load_digits
warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not reach the user either
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak()
files, digits, failed = load_digits([sys.argv[1]])
print(json.dumps({"grew_mb": peak() - before, "files": [str(f) for f in files],
                  "failed": {p.name: m for p, m in failed}}))
"""
    ran = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "DecompressionBomb" not in ran.stderr, ran.stderr
    result = json.loads(ran.stdout)
    assert result["files"] == [] and set(result["failed"]) == {"bomb.png", "scan.png", "claims.jpg"}
    assert "10000×10000 pixels (100 megapixels) is over the limit of 50 megapixels" in result["failed"]["scan.png"]
    assert all("image too large" in message for message in result["failed"].values())
    assert result["grew_mb"] < 50, result


def halve(path: Path) -> bytes:
    """The first half of a file: what an interrupted download or copy leaves."""
    data = path.read_bytes()
    return data[: len(data) // 2]


def test_predict_skips_huge_and_damaged_images_and_reads_the_rest(
    isolated: Path, cnn_checkpoint: Path, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    model = TinyCNNClassifier.load_from_checkpoint(cnn_checkpoint, map_location="cpu", weights_only=True).eval()
    # digits this model gets right when they arrive as a plain drawing: then each file below must give that answer
    candidates = np.stack([prepare_digit(Image.fromarray(images[i])) for i in range(40)])
    with torch.no_grad():
        plain = model(normalize(torch.from_numpy(candidates).float().div(255).unsqueeze(1))).argmax(dim=1).numpy()
    right = [i for i in range(40) if plain[i] == labels[i]]
    folder = isolated / "scans"
    folder.mkdir()
    expected = {}
    for kind, index in zip(VARIANTS, right, strict=False):
        path = write_variant(kind, images[index], images[right[-1]], folder)
        expected[str(path)] = int(labels[index])
    bad = {
        "bomb.png": (huge_png(15000, 15000), "image too large: 225 megapixels"),
        "scan.png": (huge_png(10000, 10000), "image too large: 10000×10000 pixels"),
        "claims.jpg": (jpeg_claiming(60000, 60000), "image too large: 3600 megapixels"),
        "cut.png": (halve(folder / "palette.png"), "truncated or damaged"),
        "cut.jpg": (halve(folder / "cmyk.jpg"), "truncated or damaged"),
        "disguised.png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", "not an image file"),
    }
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)

    result = run_cli("predict", "--ckpt_path", str(cnn_checkpoint), *TRUST, "--data.predict_images", str(folder))
    assert result.returncode == 0 and "Traceback" not in result.stderr and "Warning" not in result.stderr
    rows = {row["file"]: row for row in csv.DictReader((isolated / "runs" / "predictions.csv").open())}
    assert set(rows) == set(expected) | {str(folder / name) for name in bad}
    for name, (_, reason) in bad.items():
        row = rows[str(folder / name)]
        assert row["prediction"] == "" and reason in row["error"], row
        assert f"skipped {folder / name}: {reason}" in result.stderr
    predicted = {Path(f).name: (int(rows[f]["prediction"]), label) for f, label in expected.items()}
    assert all(got == label for got, label in predicted.values()), predicted
    assert all(rows[f]["error"] == "" for f in expected)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_exported_models_match_pytorch_on_the_whole_test_set(
    isolated: Path, cnn_checkpoint: Path, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    import onnxruntime

    from mnist_lightning.serving.export import export_model

    images, labels = mnist_test
    model = load_classifier(cnn_checkpoint, trusted=["tiny_models.TinyCNNClassifier"])
    with torch.no_grad():
        logits = model(normalize(torch.from_numpy(images).unsqueeze(1).float() / 255)).numpy()
    probabilities = torch.from_numpy(logits).softmax(dim=1).numpy()
    assert (logits.argmax(axis=1) == labels).mean() > 0.95

    result = run_cli("export", "--ckpt_path", str(cnn_checkpoint), *TRUST, "--format", "onnx", "--output", "model.onnx")
    assert "to model.onnx" in result.stderr and not list(isolated.glob(".*.tmp"))
    session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    onnx_logits, onnx_probs = session.run(None, {"images": images})
    assert np.abs(onnx_logits - logits).max() < 1e-4 and np.abs(onnx_probs - probabilities).max() < 1e-4
    one_logits, _ = session.run(None, {"images": images[:1]})  # the batch axis is dynamic
    assert np.abs(one_logits - logits[:1]).max() < 1e-4

    # the documented snippet (onnxruntime, numpy and Pillow only, preprocessing included) reads a photo right
    rng = np.random.default_rng(2)
    write_on_paper(images[0], isolated / "my_digit.jpg", rng)
    snippet = documented_onnx_snippet()
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1].startswith(f"digit {labels[0]}"), ran.stdout
    assert "model.onnx" in snippet and "my_digit.jpg" in snippet

    inputs = torch.from_numpy(images)
    script = torch.jit.load(str(export_model(model, "model.pt", "torchscript")))
    program = torch.export.load(str(export_model(model, "model.pt2", "pt2"))).module()
    for exported in (script, program):
        with torch.no_grad():
            out_logits, out_probs = exported(inputs)
        assert np.abs(out_logits.numpy() - logits).max() < 1e-4
        assert np.abs(out_probs.numpy() - probabilities).max() < 1e-4


def documented_onnx_snippet() -> str:
    text = (REPO / "docs" / "serve-and-export.md").read_text()
    match = re.search(r"<!-- onnx-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/serve-and-export.md lost its onnxruntime snippet"
    return match.group(1)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
        (["export", "--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
        (["export", "--ckpt_path", "x.ckpt", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
        (["serve"], "the following arguments are required: --ckpt_path"),
        (["export", "--ckpt_path", "garbage.ckpt"], "checkpoint garbage.ckpt is a text file"),
    ],
)
def test_serve_and_export_errors_are_one_line(
    isolated: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (isolated / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist-lightning: error: ") and expected in lines[0], lines
    assert not [p for p in isolated.iterdir() if p.suffix in (".onnx", ".pt", ".tmp")]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser).

    Without Chromium the browser tests are skipped, saying why; on CI (``CI`` set, as CI services do, and CI
    installs Chromium) a missing browser fails them instead, so that it can never pass by skipping.
    """
    chromium = next((path for path in CHROMIUM_PATHS if path.is_file()), None)
    if chromium is None:
        reason = "no Chromium at /usr/bin/chromium: apt-get install -y chromium chromium-driver (.ci/run does this)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set and the browser tests need Chromium; {reason}")
        pytest.skip(reason)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=args, timeout=60_000)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def attention_checkpoint(tmp_path: Path) -> Path:
    """An untrained TinyAttentionClassifier saved with the entries of a fit checkpoint that serving reads."""
    torch.manual_seed(0)
    model = TinyAttentionClassifier(heads=4, blocks=2)
    # what LightningCLI records beside the settings: the class and the instantiator that rebuilds it
    hparams = {
        **model.hparams,
        "_class_path": "tiny_models.TinyAttentionClassifier",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    path = tmp_path / "attention.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, LIGHTNING_VERSION: L.__version__}, path)
    return path


def trace_strokes(digit: np.ndarray, origin: tuple[float, float], pixel: float) -> list[list[tuple[float, float]]]:
    """Mouse strokes that write a digit: one horizontal stroke per run of ink in each row of its pixels."""
    strokes = []
    for row in range(digit.shape[0]):
        ink = np.flatnonzero(digit[row] > 100)
        for run in np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1) if ink.size else []:
            y = origin[1] + (row + 0.5) * pixel
            strokes.append([(origin[0] + (run[0] + 0.5) * pixel, y), (origin[0] + (run[-1] + 0.5) * pixel, y)])
    return strokes


def draw(page: Page, digit: np.ndarray) -> None:
    """Clear the pad, write ``digit`` on it with the mouse, and wait until the page shows the finished digit."""
    page.click("#clear")
    before = int(page.evaluate("document.body.dataset.updates || 0"))
    pad = page.locator("#pad").bounding_box()
    assert pad is not None
    for start, end in trace_strokes(digit, (pad["x"], pad["y"]), pad["width"] / 28):
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=3)
        page.mouse.up()
    # the page keeps up while drawing: several predictions arrive, the last one for the whole digit
    page.wait_for_function(
        f"document.body.dataset.busy === 'no' && Number(document.body.dataset.updates) > {before + 1}"
    )


def canvas_pixels(page: Page, selector: str) -> np.ndarray:
    """The RGB pixels of a canvas on the page, ``(H, W, 3)``."""
    width, height, data = page.evaluate(
        f"""() => {{ const c = document.querySelector("{selector}");
        return [c.width, c.height, Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)]; }}"""
    )
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def test_drawing_a_digit_in_a_real_browser_shows_the_right_class(
    browser: Browser, cnn_checkpoint: Path, mnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, labels = mnist_test
    with serving(cnn_checkpoint) as address:
        page = browser.new_page(viewport={"width": 1000, "height": 460})
        page.set_default_timeout(30_000)
        page.goto(address)
        assert page.inner_text("#prediction") == "–"
        for index in (0, 1, 3, 4):  # the first test images: 7, 2, 0, 4
            draw(page, images[index])
            shown = int(page.inner_text("#prediction"))
            assert shown == labels[index], f"drew a {labels[index]}, the page says {shown}"
            probs = [float(page.inner_text(f"#prob-{k}")) for k in range(10)]
            assert sum(probs) == pytest.approx(1, abs=1e-3) and max(probs) == probs[shown]
            preview = canvas_pixels(page, "#digit28")[..., 0]
            assert max(ink_box(preview)) in (19, 20, 21) and similarity(preview, images[index]) > 0.7
            assert page.is_hidden("#attention-panel")  # a CNN has no attention maps
        page.screenshot(path=str(tmp_path / "serve.png"))
        page.click("#clear")
        assert page.inner_text("#prediction") == "–" and page.inner_text("#prob-0") == "–"


def test_the_page_shows_the_class_token_attention_of_attention_models(
    browser: Browser, attention_checkpoint: Path, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    model = load_classifier(attention_checkpoint, trusted=["tiny_models.TinyAttentionClassifier"])
    with serving(attention_checkpoint, model="tiny_models.TinyAttentionClassifier") as address:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(address)
        draw(page, mnist_test[0][2])
        assert page.is_visible("#attention-panel")
        assert page.eval_on_selector_all("#block option", "options => options.map(o => o.value)") == ["0", "1"]
        assert page.input_value("#block") == "1"  # the last block first
        assert page.locator("#heads canvas").count() == 4 + 1  # every head and their mean
        seen = canvas_pixels(page, "#digit28")[..., 0]
        with torch.no_grad():
            maps = model.net.attention_maps(normalize(torch.from_numpy(seen).float().div(255).view(1, 1, 28, 28)))
        for block in (1, 0):
            page.select_option("#block", index=block)  # by position: labels count from 1
            expected = maps[block][0, :, 0, 1:].numpy()  # (heads, 16): the class token's row, patches only
            for head in range(4):
                shown = canvas_pixels(page, f"#heads figure:nth-child({head + 1}) canvas")[..., 0].astype(float)
                assert shown.shape == (4, 4)
                np.testing.assert_allclose(shown.ravel(), 255 * expected[head] / expected[head].max(), atol=1.5)
