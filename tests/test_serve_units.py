"""Serve building blocks without a server: prior checks, prompt composer, colour maps, spans, examples."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from serve_fixtures import write_test_images

from progemu.serve.examples import Example, examples_from_dataset, find_examples, unique_names
from progemu.serve.inputs import PriorError, ServeLimits, load_prior, probe_dimensions
from progemu.serve.prompts import compose_prompt
from progemu.serve.render import (
    colorize_difference,
    colorize_spread,
    grey_to_rgb,
    overlay_attention,
    phrase_color,
    phrase_spans,
    write_bundle,
)

REAL = Path("/work/shared/data/real")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_test_images(tmp_path_factory.mktemp("serve_units"))


# ------------------------------------------------------------------------------------------- priors
def test_load_prior_accepts_a_greyscale_png_and_returns_read_image_pixels(images):
    from progemu.data.images import read_image

    image = load_prior(images["chest"])
    assert image.dtype == np.float32 and image.shape == (256, 256)
    np.testing.assert_array_equal(image, read_image(images["chest"]))


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("text", "'notes.txt' is not a readable image"),
        ("photo", "'holiday.png' is a colour picture"),
        ("tiny", "'tiny.png' is only 32 x 32 px; at least 64 px"),
        ("blank", "'blank.png' is blank or nearly uniform"),
    ],
)
def test_load_prior_refuses_with_a_message_naming_the_file(images, key, fragment):
    with pytest.raises(PriorError) as caught:
        load_prior(images[key])
    message = str(caught.value)
    assert fragment in message
    assert str(images[key].parent) not in message  # the server's path never reaches the user


def test_load_prior_limits_size_dimensions_and_shape(images, tmp_path):
    from PIL import Image

    with pytest.raises(PriorError, match=r"'chest.png' is 256 x 256 px; the limit is 200 px per side"):
        load_prior(images["chest"], ServeLimits(max_side=200))
    with pytest.raises(PriorError, match=r"MB; the limit is 0.001 MB"):
        load_prior(images["chest"], ServeLimits(max_upload_mb=0.001))
    wide = tmp_path / "panorama.png"
    Image.fromarray((np.random.default_rng(0).random((100, 400)) * 255).astype(np.uint8)).save(wide)
    with pytest.raises(PriorError, match="not the shape of a chest radiograph"):
        load_prior(wide)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(PriorError, match=r"'empty.png' is empty \(0 bytes\)"):
        load_prior(empty)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images["chest"].read_bytes()[:400])
    with pytest.raises(PriorError, match="'truncated.png' could not be decoded"):
        load_prior(truncated, name=None)
    with pytest.raises(PriorError, match="'my upload' could not be found"):
        load_prior(tmp_path / "gone.png", name="my upload")


def test_load_prior_dimension_check_reads_headers_only(tmp_path):
    """Oversized PNGs (8000 px; a 30000 px decompression bomb) are refused from the header, before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def png_header_only(path: Path, side: int) -> Path:
        header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
        return path

    big = png_header_only(tmp_path / "big.png", 8000)
    assert probe_dimensions(big)[:2] == (8000, 8000)
    with pytest.raises(PriorError, match="'big.png' is 8000 x 8000 px; the limit is 4096"):
        load_prior(big)
    with pytest.raises(PriorError, match="'bomb.png' is too large to open safely"):
        load_prior(png_header_only(tmp_path / "bomb.png", 30000))


@pytest.mark.skipif(not (REAL / "xrv").is_dir(), reason="shared real data not present")
def test_load_prior_real_dicom_accepted_and_ct_modality_refused(tmp_path):
    import pydicom

    dicoms = sorted((REAL / "xrv").glob("*.dcm"))
    assert dicoms, "expected the SIIM-ACR DICOM in the shared real data"
    image = load_prior(dicoms[0])
    assert image.ndim == 2 and 0.0 <= image.min() < image.max() <= 1.0
    dataset = pydicom.dcmread(dicoms[0])
    dataset.Modality = "CT"
    ct = tmp_path / "scan.dcm"
    dataset.save_as(ct)
    with pytest.raises(PriorError, match="'scan.dcm' is a DICOM file of modality CT"):
        load_prior(ct)


@pytest.mark.skipif(not (REAL / "hannover").is_dir(), reason="shared real data not present")
def test_load_prior_accepts_real_radiographs():
    for path in sorted((REAL / "hannover").rglob("*.png"))[:3]:
        image = load_prior(path)
        assert image.std() > 0.05


# ------------------------------------------------------------------------------------------ prompts
def test_compose_prompt():
    assert compose_prompt("pleural effusion", "left", "new") == "New left pleural effusion has developed."
    assert compose_prompt("pneumothorax", "right", "resolved") == "The right pneumothorax has resolved."
    assert compose_prompt("cardiomegaly", "left", "increased") == "The cardiomegaly has increased."  # no side
    assert compose_prompt("consolidation", "unspecified", "decreased") == "The consolidation has decreased."
    with pytest.raises(ValueError, match="unknown change 'worse'; choose one of new, increased"):
        compose_prompt("pleural effusion", "left", "worse")


# ------------------------------------------------------------------------------------------- render
def test_colorize_difference_hand_computed():
    difference = np.array([[0.0, 0.2, -0.2, 0.1, 5.0]], dtype=np.float32)
    rgb, scale = colorize_difference(difference, scale=0.2)
    assert scale == 0.2
    assert rgb[0, 0].tolist() == [255, 255, 255]  # no change: white
    assert rgb[0, 1].tolist() == [round(0.70 * 255), round(0.09 * 255), round(0.17 * 255)]  # +scale: red anchor
    assert rgb[0, 2].tolist() == [round(0.13 * 255), round(0.40 * 255), round(0.67 * 255)]  # -scale: blue anchor
    # half way from white to red
    assert rgb[0, 3].tolist() == [round(0.85 * 255), round(0.545 * 255), round(0.585 * 255)]
    assert rgb[0, 4].tolist() == rgb[0, 1].tolist()  # clipped
    # default scale: the 99th percentile of |difference| (numpy's linear interpolation)
    values = np.linspace(-1, 1, 201, dtype=np.float32).reshape(1, -1)
    assert colorize_difference(values)[1] == pytest.approx(float(np.percentile(np.abs(values), 99)))


def test_colorize_spread_and_grey():
    rgb, scale = colorize_spread(np.array([[0.0, 0.5]], dtype=np.float32))
    assert scale == 0.5
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, round(0.95 * 255), round(0.35 * 255)]
    assert grey_to_rgb(np.array([[0.0, 0.5, 1.2]])).tolist() == [[[0, 0, 0], [128, 128, 128], [255, 255, 255]]]


def test_overlay_attention_blends_in_the_phrase_colour():
    image = np.full((8, 8), 0.5, dtype=np.float32)
    uniform = overlay_attention(image, np.ones((2, 2)), "#FF0000", strength=0.6)
    # a = 0.6 everywhere: 0.4 * 0.5 + 0.6 * (1, 0, 0)
    assert uniform[3, 3].tolist() == [round((0.2 + 0.6) * 255), round(0.2 * 255), round(0.2 * 255)]
    peaked = np.zeros((4, 4)); peaked[3, 3] = 1.0
    out = overlay_attention(np.zeros((16, 16)), peaked, "#0000FF", strength=1.0)
    assert out[15, 15, 2] == 255 and out[0, 0].tolist() == [0, 0, 0]  # colour only where it looked
    assert overlay_attention(image, np.zeros((2, 2)), "#FF0000")[0, 0].tolist() == [128, 128, 128]
    assert phrase_color(0) != phrase_color(1) and phrase_color(0) == phrase_color(7)


def test_phrase_spans_cover_the_text_in_order():
    text = "There is a new effusion. The effusion is small."
    spans = phrase_spans(text, ["There is a new effusion.", "the effusion is small.", "not in the text"])
    assert "".join(piece for piece, label in spans[:-1]) == text
    assert spans[0] == ("There is a new effusion.", "1")
    assert spans[2] == ("The effusion is small.", "2")  # case-insensitive, after phrase 1
    assert spans[-1] == (" not in the text", "3")  # a paraphrased phrase stays selectable
    assert phrase_spans("abc", []) == [("abc", None)]


def test_write_bundle_contents(tmp_path):
    result_dir = tmp_path / "result"
    (result_dir / "attention").mkdir(parents=True)
    (result_dir / "result.json").write_text("{}")
    (result_dir / "attention" / "00_x.png").write_bytes(b"png")
    bundle = write_bundle(tmp_path / "out.zip", prior=np.zeros((4, 4)), pipeline_dir=result_dir,
                          pictures={"difference": np.zeros((4, 4, 3), np.uint8)}, summary={"prompt": "p", "x": np.float32(1.5)})
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == ["prior.png", "result/attention/00_x.png", "result/result.json", "summary.json", "views/difference.png"]
        assert json.loads(archive.read("summary.json")) == {"prompt": "p", "x": 1.5}


# ----------------------------------------------------------------------------------------- examples
def test_find_examples_index_and_sidecars(images, tmp_path):
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(images["chest"], folder / "a.png")
    shutil.copy(images["chest"], folder / "b.png")
    (folder / "a.json").write_text(json.dumps({"progression-description": "New left pleural effusion."}))
    found = find_examples(folder)
    assert [(e.name, e.prompt) for e in found] == [("a", "New left pleural effusion."), ("b", None)]
    (folder / "examples.jsonl").write_text(
        json.dumps({"name": "effusion", "image": "b.png", "prompt": "p"}) + "\n" + json.dumps({"image": "missing.png"}) + "\n"
    )
    assert [(e.name, e.path.name, e.prompt) for e in find_examples(folder)] == [("effusion", "b.png", "p")]
    (folder / "examples.jsonl").write_text(json.dumps({"name": "no image"}) + "\n")
    with pytest.raises(ValueError, match=r"examples.jsonl: line 1 has no \"image\" key"):
        find_examples(folder)
    with pytest.raises(FileNotFoundError, match="example folder not found"):
        find_examples(tmp_path / "nope")
    named = unique_names([Example("x", Path("a")), Example("x", Path("b"))])
    assert [e.name for e in named] == ["x", "x (2)"]


def test_examples_from_dataset_test_split(tmp_path):
    from progemu.data.icgcxr import load_pairs, write_manifest, write_pair

    prior = np.full((64, 64), 0.4, np.float32)
    for index, split in enumerate(["train", "test", "test"]):
        write_pair(tmp_path, {
            "subject-id": f"1000{index}", "reference-study-id": f"5{index}", "followup-study-id": f"6{index}",
            "reference-study-order": 1, "followup-study-order": 2, "split": split,
            "progression-description": f"prompt {index}", "changes-of-findings": "x",
        }, prior, prior, source="mimic_cxr", split=split)
    write_manifest(tmp_path, load_pairs(tmp_path))
    examples = examples_from_dataset(tmp_path)
    assert [e.prompt for e in examples] == ["prompt 1", "prompt 2"]
    assert all(e.path.is_file() and e.name.startswith("test: ") for e in examples)
    assert len(examples_from_dataset(tmp_path, limit=1)) == 1


def test_session_files_are_deleted_at_session_end(tmp_path):
    from progemu.serve.app import _SessionFiles, _display_shape, _enlarge

    files = _SessionFiles()
    upload = tmp_path / "upload.png"; upload.write_bytes(b"x")
    run = tmp_path / "run"; (run / "result").mkdir(parents=True); (run / "result" / "a.png").write_bytes(b"x")
    other = tmp_path / "other.png"; other.write_bytes(b"x")
    files.add("s1", upload); files.add("s1", run); files.add("s2", other)
    assert files.cleanup("s1") == 2
    assert not upload.exists() and not run.exists() and other.exists()
    assert files.cleanup("s1") == 0
    assert _display_shape((3000, 2000)) == (768, 512) and _display_shape((64, 64)) == (64, 64)
    assert _enlarge(np.zeros((64, 32, 3), np.uint8)).shape == (384, 192, 3)  # x6, pixel repetition
    assert _enlarge(np.zeros((400, 400, 3), np.uint8)).shape == (400, 400, 3)
