"""facenet-pytorch's InceptionResnetV1 trained on VGGFace2 (512-d), weights from a file by path.

The architecture is the installed facenet-pytorch's; its weights are not in any package
(facenet-pytorch downloads them at run time, and unpickles them). Here they come from
``--encoder-weights FILE`` (facenet-pytorch's release file ``20180402-114759-vggface2.pt``, or
the same state dict as ``.safetensors``), or, only when the user allows it, are downloaded from
facenet-pytorch's release URL into the avmatch cache and checked against :data:`PINNED_SHA256`.
The file is read and checked by :mod:`avtrain.encoders.weights` (a size cap, a zip's unpacked size
bounded, no pickle: safetensors or ``torch.load(weights_only=True)``; torch's legacy non-zip format is
read too: facenet-pytorch's packaged weights are in it, its release file probably as well) and must hold exactly the network's keys and shapes (the release's
classifier head ``logits.*`` over the 8,631 VGGFace2 training identities is dropped: it is not part
of the embedding); anything else is one line naming the file.

Input: the aligned 224 crop resized to 160×160 (bilinear, as facenet-pytorch's MTCNN crops are),
``(x - 127.5) / 128`` (its fixed_image_standardization); output L2-normed. Each crop is run
alone, so an embedding does not depend on which other crops share its batch.
"""

from __future__ import annotations

import numpy as np

from avdata.io import sha256_file
from avtrain.encoders.base import (
    EXTRA,
    EncoderCard,
    FrozenEncoder,
    check_face_crops,
)
from avtrain.encoders.weights import cache_dir, check_state_dict, given_or_fetched, read_state_dict

INPUT_SIZE = 160
WEIGHTS_NAME = "20180402-114759-vggface2.pt"
WEIGHTS_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{WEIGHTS_NAME}"
# sha256 of WEIGHTS_URL's file as recorded by a third-party project that verifies it
# (no network here to check it ourselves): a download with any other digest is refused, and the
# user can always pass the file by path instead.
PINNED_SHA256 = "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b"
_HEAD_PREFIX = "logits."  # the release's VGGFace2 classifier, not part of the embedding


class FacenetVGGFace2(FrozenEncoder):
    requires = ("facenet_pytorch",)
    card = EncoderCard(
        name="facenet_vggface2",
        modality="face",
        dim=512,
        input="aligned face crop resized to 160x160 RGB, (x - 127.5) / 128",
        # facenet-pytorch's README: 20180402-114759 trained on VGGFace2 (a port of David Sandberg's facenet)
        trained_on=("VGGFace2",),
        overlaps=("vggface2", "voxceleb2"),  # VoxCeleb2's identities are VGGFace2 identities
        licence="facenet-pytorch: MIT; the VGGFace2 weights: David Sandberg's facenet release (MIT), "
        "trained on VGGFace2 (its own terms)",
        extra=EXTRA,
        weights=f"a file by path (--encoder-weights; {WEIGHTS_NAME}) or --allow-download",
    )

    def __init__(self, weights=None, allow_download: bool = False, face_margin: float | None = None):
        import torch

        (facenet_pytorch,) = self.check_installed()
        path = given_or_fetched(
            weights,
            allow_download,
            "facenet_vggface2",
            f"{WEIGHTS_NAME} from {WEIGHTS_URL}",
            WEIGHTS_URL,
            cache_dir() / WEIGHTS_NAME,
            PINNED_SHA256,
        )
        torch.manual_seed(0)  # the random init is overwritten; seeded so nothing depends on the RNG
        model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
        state = check_state_dict(path, read_state_dict(path), model, drop_prefixes=(_HEAD_PREFIX,))
        model.load_state_dict(state, strict=True)
        self.model = model.eval().requires_grad_(False)
        self.weights_sha256 = sha256_file(path)
        self.face_margin = face_margin

    def preprocess(self, crop: np.ndarray) -> np.ndarray:
        from PIL import Image

        small = np.asarray(Image.fromarray(crop).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))
        return ((small.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)

    def embed_faces(self, crops: np.ndarray) -> list[np.ndarray]:
        import torch

        crops = check_face_crops(crops, self.card.name)
        out = []
        with torch.inference_mode():
            for crop in crops:
                x = torch.from_numpy(self.preprocess(crop)[None])
                out.append(self.model(x)[0].numpy().astype(np.float32))
        return out
