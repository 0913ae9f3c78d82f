"""avdata.faces on real photos, aligned crops, video frames and broken image files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import box_iou
from PIL import Image

from avdata.errors import InputError
from avdata.faces import FaceAligner, FaceCrop, load_image
from avdata.media import decode_video_frames

# one intra-op thread, as in production workers (conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def small_photo(real_photos) -> Image.Image:
    """kate_siegel (1.8 MP) shrunk to 800 px: the format variants below start from it."""
    image = load_image(real_photos[1])
    image.thumbnail((800, 800))
    return image


def _assert_good_crop(crop: FaceCrop, size: tuple[int, int] | None = None, min_prob=0.95):
    assert crop.face.shape == (224, 224, 3) and crop.face.dtype == np.uint8
    assert crop.prob > min_prob
    assert crop.n_faces >= 1
    assert crop.face.std() > 10  # a picture, not black padding
    if size is not None:
        x1, y1, x2, y2 = crop.box
        width, height = size
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def test_real_photos_align(aligner, real_photos):
    for photo in real_photos:
        image = load_image(photo)
        crop = aligner.align(image, source=photo)
        _assert_good_crop(crop, image.size)
        assert crop.n_faces == 1


def test_downscaled_detection_matches_full_resolution(aligner, real_photos):
    """Detecting on a 640 px copy finds the box plain full-resolution MTCNN finds."""
    from facenet_pytorch import MTCNN

    plain = MTCNN()  # defaults: returns boxes sorted largest first
    for photo in real_photos:
        image = load_image(photo)
        assert max(image.size) > 640  # the downscaling path is really exercised
        crop = aligner.align(image, source=photo)
        boxes, _ = plain.detect(image)
        assert box_iou(crop.box, np.asarray(boxes[0], dtype=float)) > 0.9, photo


def test_multiface_picks_most_confident(aligner, face_dir):
    image = load_image(face_dir / "multiface.jpg")
    crop = aligner.align(image, source="multiface.jpg")
    assert crop.n_faces >= 2
    boxes, probs = aligner.detect(image)
    assert len(boxes) == len(probs) >= crop.n_faces
    assert crop.prob == probs.max()
    assert crop.box == boxes[int(probs.argmax())].tolist()
    _assert_good_crop(crop, image.size)


def test_aligned_pngs_load_and_are_detected(aligner, face_dir):
    pngs = sorted(face_dir.glob("test_images_aligned/*/1.png"))
    assert len(pngs) == 5
    for png in pngs:
        image = load_image(png)
        assert image.mode == "RGB" and image.size == (160, 160)
        _assert_good_crop(aligner.align(image, source=png))


def test_video_frames_have_faces(aligner, real_mp4s):
    for video in real_mp4s:
        frames = [Image.fromarray(frame) for frame in decode_video_frames(video, fps=1.0)]
        results = aligner.align_batch(frames, sources=[f"{video}#{i}" for i in range(len(frames))])
        assert len(results) == len(frames)
        for result in results:
            assert isinstance(result, FaceCrop), result
            _assert_good_crop(result, (512, 512))
        # Batching does not change the answer.
        single = aligner.align(frames[0])
        assert box_iou(single.box, results[0].box) > 0.99
        np.testing.assert_allclose(single.prob, results[0].prob, atol=1e-4)


def test_exif_rotated_photo_is_loaded_upright(aligner, small_photo, tmp_path):
    upright_size = small_photo.size
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise for display,
    # so store the upright picture turned 90 degrees counter-clockwise.
    stored = small_photo.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    assert Image.open(path).size == upright_size[::-1]

    loaded = load_image(path)
    assert loaded.size == upright_size
    crop = aligner.align(loaded, source=path)
    _assert_good_crop(crop, upright_size)
    reference = aligner.align(small_photo)
    assert box_iou(crop.box, reference.box) > 0.9


@pytest.mark.parametrize(
    "mode, suffix",
    [("L", ".jpg"), ("CMYK", ".jpg"), ("RGB", ".png"), ("RGBA", ".png"), ("P", ".png")],
)
def test_format_variants_become_rgb_and_align(aligner, small_photo, tmp_path, mode, suffix):
    path = tmp_path / f"variant_{mode}{suffix}"
    small_photo.convert(mode).save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == small_photo.size
    _assert_good_crop(aligner.align(loaded, source=path), loaded.size, min_prob=0.9)


def test_sixteen_bit_grayscale_png_loads(small_photo, tmp_path):
    path = tmp_path / "gray16.png"
    gray = np.asarray(small_photo.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(path)  # mode I;16
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded)[..., 0], np.asarray(small_photo.convert("L")))


def _broken_files(tmp_path: Path, real_photos) -> dict[str, Path]:
    jpg = real_photos[1].read_bytes()
    files = {
        "zero-byte": (tmp_path / "empty.jpg", b""),
        "truncated": (tmp_path / "half.jpg", jpg[: len(jpg) // 2]),
        "random bytes": (tmp_path / "noise.jpg", os.urandom(4096)),
        "text": (tmp_path / "readme.png", b"not an image\n"),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {kind: path for kind, (path, _) in files.items()}


def test_broken_files_raise_input_error_with_path(tmp_path, real_photos):
    for kind, path in _broken_files(tmp_path, real_photos).items():
        with pytest.raises(InputError) as caught:
            load_image(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, kind
    with pytest.raises(InputError, match="empty file"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(InputError, match="truncated"):
        load_image(tmp_path / "half.jpg")
    with pytest.raises(InputError, match="file not found"):
        load_image(tmp_path / "missing.jpg")


def test_blank_and_noise_images_have_no_face(aligner):
    blank = Image.new("RGB", (640, 480), (128, 128, 128))
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    noise = Image.fromarray(pixels)
    for name, image in [("blank.png", blank), ("noise.png", noise)]:
        with pytest.raises(InputError) as caught:
            aligner.align(image, source=name)
        assert str(caught.value).startswith(f"{name}: no face detected")


def test_batch_reports_faceless_images_in_place(aligner, face_dir):
    face = load_image(face_dir / "test_images_aligned" / "paul_rudd" / "1.png")
    blank = Image.new("RGB", face.size, (0, 0, 0))
    results = aligner.align_batch([face, blank, face], sources=["a", "b", "c"])
    assert isinstance(results[0], FaceCrop) and isinstance(results[2], FaceCrop)
    assert isinstance(results[1], InputError) and results[1].path == "b"


def test_selection_rule_threshold_then_probability_then_size(aligner, small_photo):
    boxes = np.array([[0, 0, 50, 50], [100, 100, 300, 300], [10, 10, 400, 400]], dtype=float)
    # Equal top probabilities: the larger box (index 1, 200 px) wins over index 0 (50 px);
    # index 2 is the largest of all but below min_prob (0.9), so it is ignored.
    crop = aligner._choose(small_photo, boxes, np.array([0.99, 0.99, 0.5]), "tie.jpg")
    assert crop.box == [100.0, 100.0, 300.0, 300.0] and crop.n_faces == 2
    expected = r"tie.jpg: no face detected \(best face probability 0.80 < 0.9\)"
    with pytest.raises(InputError, match=expected):
        aligner._choose(small_photo, boxes, np.array([0.8, 0.5, 0.7]), "tie.jpg")


def test_crop_is_square_with_margin_and_black_padding(aligner):
    image = Image.new("RGB", (400, 300), (200, 100, 50))
    # A 100x200 box touching the top edge: the crop is a 240 px square (200 * 1.2) centred on
    # the box (y from -20 to 220), so its top 20 px (18.7 of 224 output rows) lie outside the
    # image and come back black; the rest is the image, unstretched.
    crop = aligner._choose(image, np.array([[150.0, 0.0, 250.0, 200.0]]), np.array([0.99]), "x")
    face = crop.face.astype(int)
    assert (face[:17] == 0).all()
    assert (np.abs(face[21:] - [200, 100, 50]) <= 1).all()
