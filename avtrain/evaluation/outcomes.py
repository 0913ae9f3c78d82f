"""RUN/outcomes.npz: what evaluate decided per item (tuple, pair, query), beside metrics.json, so that
two runs evaluated on the same lists can be compared item by item (paired bootstrap,
:mod:`avtrain.evaluation.compare`).

Arrays, all 1-D and in list order (plain numbers, loadable with allow_pickle=False):
    matching/a2v/k2/correct              1.0 where the top-scored gallery item is the positive
    matching_other/NAME/correct          the same for other matching lists
    verification/NAME/scores, .../labels the pair scores and 1 = same identity
    retrieval/SPLIT/DIR/{hit@1,hit@5,hit@10,ap}   per query with a relevant item
    PREFIX/row                           each scored row's position (0-based) in its list's index
                                         file; rows left out (items a frozen encoder rejected) leave
                                         gaps. Files written before it lack it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from avdata.errors import AvmatchError
from avdata.io import atomic_output

OUTCOMES_FILE = "outcomes.npz"
ROW = "row"  # the array of row positions beside each list's outcomes
MAX_OUTCOMES_BYTES = 256 << 20  # 4.8M pairs of float64 + labels; the real lists are far smaller


def save_outcomes(path: Path, outcomes: dict[str, np.ndarray]) -> None:
    with atomic_output(path) as f:  # np.savez to a file object adds no .npz suffix
        np.savez(f, **{k: np.asarray(v, dtype=np.float64) for k, v in sorted(outcomes.items())})


def load_outcomes(path: Path) -> dict[str, np.ndarray]:
    """An outcomes.npz read back as untrusted: a regular file inside its run, capped, no pickles,
    every array 1-D and finite."""
    from avdata.untrusted import read_inside

    path = Path(path)
    raw = read_inside(path.parent, path.name, max_bytes=MAX_OUTCOMES_BYTES)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as d:
            out = {k: d[k] for k in d.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise AvmatchError(f"{path}: not a readable outcomes file ({exc})") from None
    for k, v in out.items():
        if v.ndim != 1 or v.dtype.kind not in "fiu" or not np.isfinite(v).all():
            raise AvmatchError(f"{path}: {k} is not a list of finite numbers")
        if k.rsplit("/", 1)[-1] == ROW and not (
            (v >= 0).all() and (v == np.round(v)).all() and (np.diff(v) > 0).all()
        ):
            raise AvmatchError(f"{path}: {k} is not increasing row positions (whole numbers >= 0)")
    return out
