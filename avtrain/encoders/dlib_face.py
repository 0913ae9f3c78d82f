"""dlib's face recognition ResNet (128-d) with its 5-point landmark predictor, from the
face-recognition-models package (dlib-bin runs them).

Input: avdata's aligned 224×224 crop, the square around the MTCNN box grown by the shards'
``face_margin`` (avdata.faces.FaceAligner.crop_square). The box is put back into the crop (the
centred square of side 224 / (1 + margin)), dlib's 5-point predictor finds the eye corners and the
nose on it, ``get_face_chip`` rotates and scales the face to dlib's 150×150 chip, and the ResNet
gives the 128-d descriptor (not L2-normed: dlib compares descriptors by Euclidean distance, 0.6
being its same-person threshold). The predictor always answers with 5 points, even on a black
or noise image (its mean shape), so a crop is first shown to dlib's own HOG face detector (built
into dlib; ~10 ms on a 224 crop): a crop where it finds no face, or whose points fall outside the
crop, eyes closer than a sixth of the box or a nose above the eyes, is a reject
("no usable face landmarks: ...").
"""

from __future__ import annotations

import numpy as np

from avdata.io import sha256_file
from avtrain.encoders.base import (
    EXTRA,
    EncoderCard,
    EncoderError,
    FrozenEncoder,
    ItemRejected,
    check_face_crops,
)

CHIP_SIZE = 150  # dlib_face_recognition_resnet_model_v1's input (get_face_chip's default)
CHIP_PADDING = 0.25  # get_face_chip's default, what the model was trained with
MIN_EYE_DISTANCE = 1 / 6  # of the face box's side; real faces measure 0.3-0.45


class DlibFace(FrozenEncoder):
    requires = ("dlib", "face_recognition_models")
    card = EncoderCard(
        name="dlib",
        modality="face",
        dim=128,
        input="aligned face crop -> dlib 5-point landmarks -> get_face_chip 150x150 RGB",
        # blog.dlib.net (2017-02, "High Quality Face Recognition with Deep Metric Learning"): about
        # 3 million faces from FaceScrub, the VGG (VGG-Face) dataset and images scraped by dlib's author
        trained_on=("VGG-Face", "FaceScrub", "web images scraped by dlib's author"),
        overlaps=("voxceleb1",),  # VoxCeleb1's identities are VGG-Face (VGGFace1) identities
        licence="dlib: Boost Software License 1.0; the models: public domain (dlib-models README), "
        "shipped by face-recognition-models 0.3.0 (MIT in its metadata, CC0 1.0 in its LICENSE file)",
        extra=EXTRA,
        weights="in the face-recognition-models package (dlib_face_recognition_resnet_model_v1.dat, "
        "shape_predictor_5_face_landmarks.dat)",
    )

    def __init__(self, weights=None, allow_download: bool = False, face_margin: float | None = None):
        if weights is not None:
            raise EncoderError(
                f"encoder dlib takes no --encoder-weights ({weights}): it uses the models inside the "
                f"face-recognition-models package"
            )
        dlib, models = self.check_installed()
        if face_margin is None:
            from avdata.extract import ExtractConfig

            face_margin = ExtractConfig().face_margin
        self.face_margin = float(face_margin)
        predictor = models.pose_predictor_five_point_model_location()
        resnet = models.face_recognition_model_location()
        try:
            self._predictor = dlib.shape_predictor(predictor)
            self._resnet = dlib.face_recognition_model_v1(resnet)
        except RuntimeError as exc:
            raise EncoderError(f"dlib cannot load its models ({exc})") from None
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        # both files make the encoder: one sha256 over the two files' sha256, in a fixed order
        from avdata.io import sha256_text

        self.weights_sha256 = sha256_text(f"{sha256_file(predictor)} {sha256_file(resnet)}")

    def face_box(self, side: int = 224) -> tuple[int, int, int, int]:
        """The MTCNN box's square in the crop: (left, top, right, bottom)."""
        box = side / (1.0 + self.face_margin)
        left = (side - box) / 2.0
        return round(left), round(left), round(left + box), round(left + box)

    def landmarks(self, crop: np.ndarray):
        """dlib's 5 points on the crop, checked; ItemRejected when they are no face's."""
        if not len(self._detector(crop, 0)):
            raise ItemRejected("no usable face landmarks: dlib's face detector finds no face in the crop")
        left, top, right, bottom = self.face_box(crop.shape[0])
        shape = self._predictor(crop, self._dlib.rectangle(left, top, right, bottom))
        points = np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], float)
        side = crop.shape[0]
        if np.any(points < 0) or np.any(points >= side):
            raise ItemRejected("no usable face landmarks: a landmark falls outside the crop")
        eye_a, eye_b, nose = points[0:2].mean(0), points[2:4].mean(0), points[4]
        eye_distance = float(np.linalg.norm(eye_a - eye_b)) / (right - left)
        if eye_distance < MIN_EYE_DISTANCE:
            raise ItemRejected(
                f"no usable face landmarks: eyes {eye_distance:.2f} of the face box apart "
                f"(at least {MIN_EYE_DISTANCE:.2f})"
            )
        if nose[1] <= min(eye_a[1], eye_b[1]):
            raise ItemRejected("no usable face landmarks: the nose lies above the eyes")
        return shape

    def embed_faces(self, crops: np.ndarray) -> list[np.ndarray | ItemRejected]:
        crops = check_face_crops(crops, self.card.name)
        out: list[np.ndarray | ItemRejected] = []
        for crop in crops:
            crop = np.ascontiguousarray(crop)
            try:
                shape = self.landmarks(crop)
            except ItemRejected as exc:
                out.append(exc)
                continue
            chip = self._dlib.get_face_chip(crop, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            out.append(np.asarray(self._resnet.compute_face_descriptor(chip), dtype=np.float32))
        return out
