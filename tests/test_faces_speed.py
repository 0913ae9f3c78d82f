"""The fast face path (issue #12) and bounded image decoding (issue #11 item 13).

* The aligner's reduced search (min_face_fraction on plain MTCNN's ladder, detection copy,
  channels-last stages) picks plain MTCNN's face on "web portraits" of 250-800 px made at test
  time from the real photos (bench/faces.py, make_web_portraits; never committed).
* The batched, letterboxed path (the CUDA path, run here on the CPU) picks the per-image path's
  faces, through FaceAligner and through the Extractor that feeds build-shards.
* Device choice and its record in the manifest; huge images refused or draft-decoded.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import box_iou
from PIL import Image

from avdata.errors import InputError
from avdata.extract import ExtractConfig, Extractor
from avdata.faces import (
    MAX_IMAGE_PIXELS,
    DeviceError,
    FaceAligner,
    FaceCrop,
    cuda_present,
    load_image,
    resolve_device,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def _bench_faces():
    spec = importlib.util.spec_from_file_location("bench_faces", REPO / "bench" / "faces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def web_portraits(face_dir, tmp_path_factory) -> list[Path]:
    paths = _bench_faces().make_web_portraits(face_dir, tmp_path_factory.mktemp("web_portraits"))
    assert len(paths) == 22
    for path in paths:
        assert 250 <= max(Image.open(path).size) <= 800
    return paths


def test_web_portraits_match_plain_mtcnn(aligner, web_portraits):
    """Same hit rate and the same face (IoU >= 0.9) as plain MTCNN on the full image."""
    bench = _bench_faces()
    plain = bench.plain_mtcnn()
    for path in web_portraits:
        image = load_image(path)
        plain_box, _ = bench.plain_align(plain, image)
        crop = aligner.align(image, source=path)
        assert box_iou(plain_box, crop.box) >= 0.9, path


def test_min_face_follows_plain_mtcnn_ladder(aligner):
    # 0.125 * 300 = 37.5 px: the largest rung 20 / 0.709^k not above it is 20 / 0.709 = 28.2
    assert aligner.min_face((400, 300)) == pytest.approx(20 / 0.709)
    # a 1000x800 image: 100 px -> 20 / 0.709^4 = 79.2; the copy makes that face 40 px
    face = aligner.min_face((1000, 800))
    assert face == pytest.approx(20 / 0.709**4)
    plan = aligner._plan((1000, 800))
    assert plan.size == (round(1000 * 40 / face), round(800 * 40 / face))
    assert plan.min_face == pytest.approx(40, rel=0.01)
    # small images are not upscaled; fraction 0 searches down to 20 px like plain MTCNN
    assert aligner._plan((200, 160)).size == (200, 160)
    assert FaceAligner(min_face_fraction=0).min_face((1000, 800)) == 20
    with pytest.raises(ValueError):
        FaceAligner(min_face_fraction=1.5)


def _same_choice(a: FaceCrop | InputError, b: FaceCrop | InputError):
    assert type(a) is type(b), (a, b)
    if isinstance(a, FaceCrop):
        assert box_iou(a.box, b.box) >= 0.99
        assert abs(a.prob - b.prob) < 1e-3 and a.n_faces == b.n_faces


def test_letterboxed_batch_matches_per_image(aligner, real_photos, face_dir, web_portraits):
    """One batch of mixed sizes on one canvas chooses the per-image faces (IoU >= 0.99)."""
    paths = [
        *real_photos,
        face_dir / "multiface.jpg",
        *sorted(face_dir.glob("test_images_aligned/*/1.png")),
        *web_portraits[::3],
    ]
    images = [load_image(path) for path in paths] + [Image.new("RGB", (300, 200), (90, 90, 90))]
    sizes = {aligner._plan(image.size).size for image in images}
    assert len(sizes) > 5  # really a mix of copy sizes on one canvas
    batched = aligner.align_batch(images, sources=[str(p) for p in paths] + ["blank"], letterbox=True)
    for image, path, result in zip(images, [*paths, "blank"], batched):
        try:
            single = aligner.align(image, source=path)
        except InputError as error:
            single = error
        _same_choice(result, single)
    assert isinstance(batched[-1], InputError) and batched[-1].path == "blank"


def _rows(paths: list[Path], modality: str) -> list[dict]:
    return [
        {
            "path": str(p),
            "rel_path": f"Some_Name/{p.parent.name}_{p.name}",
            "vox_id": "id10001",
            "name": "Some_Name",
            "source_id": p.parent.name,
            "modality": modality,
        }
        for p in paths
    ]


def test_extractor_batched_path_matches_per_image(real_photos, real_mp4s, face_dir, tmp_path):
    """The CUDA path's extractor (batches, decode threads), run on the CPU: same samples, same
    faces (IoU >= 0.99), same rejects, in the same order as the per-image path."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (320, 240), (0, 0, 0)).save(blank)
    rows = (
        _rows([real_photos[1], broken, face_dir / "multiface.jpg", blank], "face")
        + _rows(real_mp4s[:1], "video")
        + _rows([real_photos[3]], "face")
    )
    config = ExtractConfig(max_frames_per_video=4)
    per_image = list(Extractor(config).extract_rows(rows, "face"))
    batched_extractor = Extractor(config, batch_faces=True)
    assert batched_extractor.batch_faces and not Extractor(config).batch_faces
    batched = list(batched_extractor.extract_rows(rows, "face"))
    assert len(batched) == len(per_image) == len(rows)
    for one, many in zip(per_image, batched):
        assert [s.key for s in one.samples] == [s.key for s in many.samples]
        assert one.rejects == many.rejects
        for a, b in zip(one.samples, many.samples):
            assert box_iou(a.detection["box"], b.detection["box"]) >= 0.99
            # boxes differ by ~1e-4 px between the two paths: a crop may round 1 px apart
            assert max(abs(x - y) for x, y in zip(a.meta["crop"], b.meta["crop"])) <= 1
            assert {k: v for k, v in a.meta.items() if k != "crop"} == {
                k: v for k, v in b.meta.items() if k != "crop"
            }
    assert len(batched[4].samples) == 4  # the video's frames
    assert "not a recognised image" in batched[1].rejects[0]["reason"]
    assert "no face detected" in batched[3].rejects[0]["reason"]


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if cuda_present():
        import torch

        n = torch.cuda.device_count()
        assert resolve_device("auto", 0) == "cuda:0"
        assert resolve_device("cuda", 5) == f"cuda:{5 % n}"
    else:
        assert resolve_device("auto", 3) == "cpu"
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")


def test_build_shards_records_device(tmp_path, real_photos):
    from click.testing import CliRunner

    from avdata.cli import main

    faces = tmp_path / "faces" / "Some_Name"
    faces.mkdir(parents=True)
    photo = load_image(real_photos[1])
    photo.thumbnail((400, 400))
    photo.save(faces / "1.jpg")
    meta = tmp_path / "vox1_meta.csv"
    meta.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid10001\tSome_Name\tm\tUSA\tdev\n")
    args = [
        "build-shards",
        "--faces",
        str(tmp_path / "faces"),
        "--meta",
        str(meta),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    if not cuda_present():
        failed = CliRunner().invoke(main, [*args, "--device", "cuda"])
        assert failed.exit_code == 1 and "no CUDA device" in failed.output
        assert len(failed.output.strip().splitlines()) == 1
    result = CliRunner().invoke(main, args)  # --device auto
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["device"] == ("cuda" if cuda_present() else "cpu")
    assert manifest["config"]["extract"]["min_face_fraction"] == 0.125


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height (RGB) but whose pixel data is a few bytes: any
    attempt to decode it fails as truncated, so a 'too large' error proves nothing was decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_huge_png_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    _png_header_only(path, 12000, 12000)
    with pytest.raises(
        InputError, match=r"image too large: 12000x12000 = 144.0 MP .* 40 MP decoding cap"
    ) as caught:
        load_image(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    # under the cap the same kind of file is decoded, and fails as the truncated file it is
    small = tmp_path / "small.png"
    _png_header_only(small, 3000, 3000)
    assert 3000 * 3000 < MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match="truncated|unreadable"):
        load_image(small)


def test_big_jpeg_is_decoded_reduced_under_the_cap(aligner, real_photos, tmp_path):
    path = tmp_path / "big.jpg"
    big = load_image(real_photos[1]).resize((1400, 2006))  # kate_siegel, 2.8 MP, same aspect
    big.save(path, quality=90)
    reduced = load_image(path, max_pixels=1_000_000)
    assert reduced.size == (700, 1003)  # DCT-scaled by 2 while decoding, not decoded then shrunk
    crop = aligner.align(reduced, source=path)
    full = aligner.align(big)
    assert box_iou(np.asarray(crop.box) * 2, full.box) > 0.9
    with pytest.raises(InputError, match="above the 0.02 MP decoding cap even at 1/8 scale"):
        load_image(path, max_pixels=20_000)


def test_area_resample_is_bit_identical_to_facenets_imresample():
    """Crops and pyramid levels read from the summed-area table equal torch's area
    interpolation (facenet's ``imresample``) bit for bit, whatever the crop and output size."""
    import torch
    from facenet_pytorch.models.utils.detect_face import imresample

    from avdata.mtcnn_batch import _area_resample, _integral

    rng = np.random.default_rng(0)
    board = torch.from_numpy(rng.integers(0, 256, (2, 123, 97, 3), dtype=np.uint8))
    table = _integral(board)
    images = board.permute(0, 3, 1, 2).float()
    k = 300
    image_inds = torch.from_numpy(rng.integers(0, 2, k))
    top = torch.from_numpy(rng.integers(0, 120, k))
    left = torch.from_numpy(rng.integers(0, 94, k))
    bottom = torch.minimum(top + torch.from_numpy(rng.integers(1, 123, k)), torch.tensor(123))
    right = torch.minimum(left + torch.from_numpy(rng.integers(1, 97, k)), torch.tensor(97))
    for out_h, out_w in ((24, 24), (48, 48), (37, 11), (150, 130)):  # shrinking and enlarging
        ours = _area_resample(table, image_inds, top, bottom, left, right, out_h, out_w)
        for j in range(k):
            region = images[image_inds[j] : image_inds[j] + 1, :, top[j] : bottom[j], left[j] : right[j]]
            assert torch.equal(ours[j : j + 1], imresample(region, (out_h, out_w))), (j, out_h, out_w)


def test_mosaic_levels_do_not_overlap_and_start_even():
    from avdata.mtcnn_batch import _mosaic_layout

    for shape in ((128, 104), (121, 151), (17, 13), (300, 301)):
        sizes, scale = [], 1.0
        while min(shape) * scale >= 12:
            sizes.append((int(shape[0] * scale + 1), int(shape[1] * scale + 1)))
            scale *= 0.709
        positions, (height, width) = _mosaic_layout(sizes)
        taken = np.zeros((height, width), dtype=int)
        for (top, left), (h, w) in zip(positions, sizes):
            assert top % 2 == 0 and left % 2 == 0  # PNet's pooling windows fall as when alone
            taken[top : top + h + h % 2, left : left + w + w % 2] += 1
        assert taken.max() == 1
        assert taken.sum() / taken.size > 0.75  # the mosaic is not mostly padding


def test_detect_faces_gives_facenets_boxes(aligner, web_portraits, real_photos):
    """One image alone through avdata.mtcnn_batch (mosaic first stage, summed-area crops) finds
    the boxes facenet-pytorch's own detect_face finds: same count, within 0.01 px."""
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    from avdata.mtcnn_batch import detect_faces

    m = aligner.mtcnn
    nets = [getattr(stage, "net", stage) for stage in (m.pnet, m.rnet, m.onet)]
    for path in web_portraits[::3] + real_photos[:2]:
        small, plan = aligner._detection_copy(load_image(path))
        pixels = np.asarray(small)
        for min_face in (plan.min_face, 20.0):
            with torch.no_grad():
                ours, probs = detect_faces([pixels], min_face, *nets, m.thresholds, m.factor, "cpu")[0]
                theirs, _ = detect_face(pixels, min_face, *nets, m.thresholds, m.factor, "cpu")
            theirs = np.asarray(theirs, dtype=np.float64).reshape(-1, 5)
            theirs = theirs[
                np.argsort(-(theirs[:, 2] - theirs[:, 0]) * (theirs[:, 3] - theirs[:, 1]), kind="stable")
            ]
            assert ours.shape == theirs[:, :4].shape, (path, min_face)
            np.testing.assert_allclose(ours, theirs[:, :4], atol=0.01, err_msg=str(path))
            np.testing.assert_allclose(probs, theirs[:, 4], atol=1e-5)


def test_first_stage_mosaic_equals_facenets_level_by_level_pnet(aligner, real_photos):
    """All pyramid levels through PNet on one mosaic give facenet's per-level candidates: the
    same boxes in the same order, scores and offsets within float rounding. Threshold 0 keeps
    every window, those on the levels' last rows and columns (the ceil-mode pooling edge) too."""
    import torch
    from facenet_pytorch.models.utils.detect_face import batched_nms, generateBoundingBox, imresample

    from avdata.mtcnn_batch import _first_stage, _integral

    pnet = getattr(aligner.mtcnn.pnet, "net", aligner.mtcnn.pnet)
    for path, min_face in ((real_photos[0], 60.0), (real_photos[1], 45.0)):
        image = load_image(path)
        image.thumbnail((181, 181))  # odd sides: the levels' last pooling windows are partial
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        scales, scale = [], 12.0 / min_face
        while min(height, width) * scale >= 12:
            scales.append(scale)
            scale *= 0.709
        expected = []
        with torch.no_grad():
            whole = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float()
            for scale in scales:
                level = imresample(whole, (int(height * scale + 1), int(width * scale + 1)))
                reg, probs = pnet((level - 127.5) * 0.0078125)
                boxes, inds = generateBoundingBox(reg, probs[:, 1], scale, 0.0)
                expected.append(boxes[batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.5)])
            expected = torch.cat(expected)
            table = _integral(torch.from_numpy(pixels.copy())[None])
            ours, inds = _first_stage(
                table,
                np.array([width]),
                np.array([height]),
                (height, width),
                scales,
                [len(scales)],
                pnet,
                0.0,
                torch.float32,
            )
        assert len(ours) == len(expected) > 20
        assert (inds == 0).all()
        torch.testing.assert_close(ours[:, :4], expected[:, :4], rtol=0, atol=0)  # whole pixels
        torch.testing.assert_close(ours[:, 4:], expected[:, 4:], rtol=0, atol=1e-4)


def test_summed_area_table_stays_exact_for_large_images():
    """Sums of a white 3000 x 3000 image pass 2**31: the table widens instead of wrapping."""
    import torch

    from avdata.mtcnn_batch import _area_resample, _integral

    board = torch.full((1, 3000, 3000, 1), 255, dtype=torch.uint8)
    table = _integral(board)
    assert int(table[0, -1, -1, 0]) == 255 * 3000 * 3000
    whole = [torch.tensor([v]) for v in (0, 0, 3000, 0, 3000)]
    assert bool((_area_resample(table, *whole, 7, 5) == 255).all())
