"""``avtrain match``: rank a gallery of the other modality for one query."""

from __future__ import annotations

import numpy as np

from avtrain.evaluation.evaluate import SCORE_KIND  # the one scoring rule (-L2)
from avtrain.serve.errors import InferenceError
from avtrain.serve.model import FaceVoiceModel

__all__ = ["format_ranking", "match"]


def match(
    model: FaceVoiceModel, query: str, query_modality: str, gallery: list[str], batch_size: int = 64
) -> dict:
    """Rank a gallery of the other modality for one query by -L2 (best first).

    Returns {"query", "query_modality", "gallery_modality", "score", "ranking": [{"rank",
    "path", "score"}], "rejects": [{"path", "reason"}]}. A query that cannot be used is an
    InputError; bad gallery files are rejects. Ties keep the gallery's order.
    """
    if query_modality not in ("voice", "face"):
        raise ValueError(query_modality)
    if not gallery:
        raise InferenceError("match needs at least one gallery file")
    g_mod = "face" if query_modality == "voice" else "voice"
    to_extract = {"voice": "audio", "face": "face"}
    q_items = model.extract_items(query, to_extract[query_modality])[:1]
    q = model.first_array(q_items)
    g_items = [model.extract_items(p, to_extract[g_mod])[0] for p in gallery]  # a video: its first frame
    good = [it for it in g_items if it.array is not None]
    hq = model.embed_inputs([q], query_modality, batch_size)
    hg = model.embed_inputs([it.array for it in good], g_mod, batch_size)
    from avtrain.evaluation import metrics as M

    scores = (
        M.gather_scores(
            hq.astype(np.float64),
            hg.astype(np.float64),
            np.zeros(1, np.intp),
            np.arange(len(good), dtype=np.intp)[None, :],
            kind=SCORE_KIND,
        )[0]
        if good
        else []
    )
    order = sorted(range(len(good)), key=lambda i: (-scores[i], i))
    return {
        "query": query,
        "query_modality": query_modality,
        "gallery_modality": g_mod,
        "score": SCORE_KIND,
        "ranking": [
            {"rank": r + 1, "path": good[i].path, "score": float(scores[i])} for r, i in enumerate(order)
        ],
        "rejects": [{"path": it.path, "reason": it.reason} for it in g_items if it.array is None],
    }


def format_ranking(result: dict) -> str:
    head = (
        f"{result['query_modality']} {result['query']}: {len(result['ranking'])} {result['gallery_modality']}(s) "
        f"ranked by score = -L2 (higher = more likely the same person)"
    )
    lines = [head]
    lines += [f"{r['rank']:>4}  {r['score']:>10.4f}  {r['path']}" for r in result["ranking"]]
    lines += [f"   -  {'rejected':>10}  {r['path']}: {r['reason']}" for r in result["rejects"]]
    return "\n".join(lines)
