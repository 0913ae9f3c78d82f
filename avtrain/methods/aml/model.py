"""AML (the seed paper): shared generator, modality discriminator, task heads, and its training step.

Layer for layer as in docs/aml-spec.md ("Networks"); the audio and visual branches are
avtrain.methods.encoders'. One step is Algorithm 1 (:meth:`AML.train_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from avdata.tasks import TASKS
from avtrain.losses import AMLLoss, LossConfig
from avtrain.methods.base import Method, check_modality
from avtrain.methods.encoders import (
    FEATURE_DIM,
    TRAINED_BRANCH,
    encoder_choice_problem,
    init_weights,
    modality_branch,
)

EMBED_DIM = 128  # size of the modality-independent feature h
# Matching heads (ModelConfig.head). "concat_linear" is the paper's and its reference's, and the
# default; it cannot learn matching (no query-gallery interaction term, see MatchingHead).
# "concat_mlp" (SVHF-Net style) and "diff_mlp" (per item, on h_q - h_j) can. docs/training.md,
# "Matching heads".
MATCHING_HEADS = ("concat_linear", "concat_mlp", "diff_mlp")
# Verification and retrieval heads (ModelConfig.pair_head). "linear" is the paper's, and the
# default; neither can learn its task: C_V (one layer on [h_q, h_g]) scores u·h_q + v·h_g + c,
# a voice term plus a face term, and C_R (one layer on h_q - h_g) gives w·h_q - w·h_g + c, which
# ranks the gallery by -w·h_g for every query. "diff_mlp" scores MLP(h_q - h_g) (DiffMLPHead).
# docs/training.md, "Verification and retrieval heads".
PAIR_HEADS = ("linear", "diff_mlp")
CONCAT_MLP_HIDDEN = (1024, 512)  # SVHF-Net's fc8/fc9 after the concatenation
DIFF_MLP_HIDDEN = 2 * EMBED_DIM  # enough for -sum|h_q - h_j| exactly: |x| = relu(x) + relu(-x)


@dataclass
class ModelConfig:
    task: str = "matching"  # matching | verification | retrieval
    k: int = 2  # gallery size; verification has k = 1 (one face or voice per query)
    # The paper's φ and ψ use one θ_G and the reference has one generator, so sharing is
    # the default; False gives each modality its own generator (same architecture).
    shared_generator: bool = True
    generator_dropout: float = 0.1
    discriminator_dropout: float = 0.3
    head_dropout: float = 0.1  # reference: Dropout 0.1 before each task head
    leaky_slope: float = 0.2
    clip_value: float | None = 0.01  # WGAN-style weight clipping of D (paper; WGAN's 0.01)
    head: str = "concat_linear"  # matching head: one of MATCHING_HEADS
    pair_head: str = "linear"  # verification / retrieval head: one of PAIR_HEADS
    # Each modality's encoder: "aml", the paper's branch trained with the method (the default), or a
    # frozen pretrained encoder of avtrain.encoders (voice: resemblyzer, ecapa; face: dlib,
    # facenet_vggface2), whose precomputed vectors (a feature store) feed a small trainable adapter.
    voice_encoder: str = TRAINED_BRANCH
    face_encoder: str = TRAINED_BRANCH
    # the weights file of an encoder that takes one by path (facenet_vggface2, ecapa); None: the
    # weights its package installs. Its sha256 must be the one the feature store was built with.
    voice_encoder_weights: str | None = None
    face_encoder_weights: str | None = None

    def __post_init__(self):
        for modality, key in (("audio", "voice_encoder"), ("face", "face_encoder")):
            problem = encoder_choice_problem(modality, getattr(self, key))
            if problem:
                raise ValueError(f"{key}: {problem}")
            if getattr(self, key) == TRAINED_BRANCH and getattr(self, f"{key}_weights") is not None:
                raise ValueError(f"{key}_weights: only for a frozen encoder; {key} is aml (trained)")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "verification" and self.k != 1:
            raise ValueError("verification compares one query with one gallery item: k must be 1")
        if self.task != "verification" and self.k < 2:
            raise ValueError(f"{self.task} needs a gallery of k >= 2, got k={self.k}")
        if self.head not in MATCHING_HEADS:
            raise ValueError(f"head must be one of {MATCHING_HEADS}, got {self.head!r}")
        if self.pair_head not in PAIR_HEADS:
            raise ValueError(f"pair_head must be one of {PAIR_HEADS}, got {self.pair_head!r}")
        if self.task != "matching" and self.head != "concat_linear":
            raise ValueError(
                f"head={self.head!r} is a matching head; {self.task}'s head is pair_head (one of {PAIR_HEADS})"
            )
        if self.task == "matching" and self.pair_head != "linear":
            raise ValueError(
                f"pair_head={self.pair_head!r} is the verification/retrieval head; matching's is head "
                f"(one of {MATCHING_HEADS})"
            )


# ------------------------------------------------------- generator and discriminator


class Generator(nn.Module):
    """3200-d branch features -> 128-d modality-independent h in (-1, 1)."""

    def __init__(self, dropout: float = 0.1, slope: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(FEATURE_DIM, EMBED_DIM),
            nn.LeakyReLU(slope),
            nn.Dropout(dropout),
            nn.Linear(EMBED_DIM, EMBED_DIM),
            nn.Tanh(),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.layers(f)


class ModalityDiscriminator(nn.Module):
    """h (N, 128) -> modality logits (N, 2): column 0 = audio, column 1 = visual."""

    def __init__(self, dropout: float = 0.3, clip_value: float | None = 0.01):
        super().__init__()
        self.clip_value = clip_value
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBED_DIM, 2))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)

    @torch.no_grad()
    def clip_weights(self, c: float | None = None) -> None:
        """WGAN weight clipping: clamp every parameter to [-c, c] (call after each D step).

        c defaults to self.clip_value; nothing happens when both are None.
        """
        c = self.clip_value if c is None else c
        if c is None:
            return
        for p in self.parameters():
            p.clamp_(-c, c)


# ------------------------------------------------------------------------ task heads
# Every head takes h_query (B, D) and h_gallery (B, k, D) and returns logits.


class MatchingHead(nn.Module):
    """Concatenate query and the k gallery features, classify which position matches.

    The paper's head ("concat_linear"), kept as the default. It cannot learn matching: one
    linear layer gives position j the logit  b_j + W_jq·h_q + sum_i W_ji·h_i,  a sum of one
    term per input with no product of h_q and h_j, so it cannot score how close h_j is to
    h_q. Were the weights the same for every position, the h_q term would be common to all
    logits and cancel in the softmax, leaving a score of the gallery alone: exactly chance,
    since the positive is an item like any other. Position-specific weights allow only crude
    one-sided tests on signed differences (v·(h_1 - h_q) > -c passes every match but also half
    the non-matches) and memorisation; see docs/training.md, "Matching heads". MatchingMLPHead
    and DiffMLPHead can learn the comparison.
    """

    def __init__(self, k: int, dropout: float = 0.1):
        super().__init__()
        self.k = k
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear((k + 1) * EMBED_DIM, k))

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_gallery.shape[1] != self.k:
            raise ValueError(f"matching head built for k={self.k}, got {h_gallery.shape[1]}")
        return self.layers(torch.cat([h_query, h_gallery.flatten(1)], dim=1))  # (B, k)


class MatchingMLPHead(nn.Module):
    """SVHF-Net style ("concat_mlp"): an MLP over the concatenation [h_q, h_1..h_k] -> k logits.

    The hidden ReLU layers can form query-gallery interactions that one linear layer cannot;
    it is still tied to the k it was built for and has to learn the comparison for every
    gallery position separately.
    """

    def __init__(
        self, k: int, dropout: float = 0.1, hidden: tuple[int, ...] = CONCAT_MLP_HIDDEN, dim: int = EMBED_DIM
    ):
        super().__init__()
        self.k = k
        sizes = [(k + 1) * dim, *hidden]
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        for n_in, n_out in pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], k))
        self.layers = nn.Sequential(*layers)

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_gallery.shape[1] != self.k:
            raise ValueError(f"matching head built for k={self.k}, got {h_gallery.shape[1]}")
        return self.layers(torch.cat([h_query, h_gallery.flatten(1)], dim=1))  # (B, k)


class DiffMLPHead(nn.Module):
    """Per item ("diff_mlp"): logit_j = MLP(h_q - h_j), the same small MLP for every position.

    Like the retrieval head it scores the difference, so it works for any gallery size and is
    symmetric in the positions; unlike a linear layer on h_q - h_j (whose w·h_q term is the
    same for every j and cancels in the softmax) the hidden layer can score closeness, e.g.
    -sum_d |h_q,d - h_j,d|. Broadcasts like RetrievalHead: (Q, 1, D) with (1, G, D) -> (Q, G).
    """

    def __init__(self, dropout: float = 0.1, hidden: int = DIFF_MLP_HIDDEN, dim: int = EMBED_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_query.dim() == 2:
            h_query = h_query.unsqueeze(1)
        return self.layers(h_query - h_gallery).squeeze(-1)  # (B, k)


class VerificationHead(nn.Module):
    """Concatenate the pair, two-way classify: logit 1 = same identity.

    The paper's C_V (pair_head "linear"). It cannot learn verification: logit 1 - logit 0 =
    u·h_q + v·h_g + c is a score of the voice plus a score of the face, with no term in both.
    The pairs of a balanced list show every voice and every face in positive and negative pairs
    alike, so such a score ranks a negative pair above a positive one as often as the reverse
    (chance), unless it memorises which training items happen to occur in more positives. With
    the paper's (λ, β, γ) = (0, 0, 2) nothing else trains the embeddings to bring pairs together.
    """

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * EMBED_DIM, 2))

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_gallery.dim() == 3:
            if h_gallery.shape[1] != 1:
                raise ValueError(f"verification compares pairs, got gallery {h_gallery.shape[1]}")
            h_gallery = h_gallery[:, 0]
        return self.layers(torch.cat([h_query, h_gallery], dim=1))  # (B, 2)


class VerificationScoreHead(nn.Module):
    """A verification head from a per-item score (pair_head "diff_mlp": :class:`DiffMLPHead`):
    logits (B, 2) = [0, score(h_q, h_g)], so logit 1 - logit 0 is the score and the
    cross-entropy is a logistic loss on it."""

    def __init__(self, score: nn.Module):
        super().__init__()
        self.score = score

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_gallery.dim() == 3:
            if h_gallery.shape[1] != 1:
                raise ValueError(f"verification compares pairs, got gallery {h_gallery.shape[1]}")
            h_gallery = h_gallery[:, 0]
        s = self.score(h_query, h_gallery[:, None])[:, 0]  # (B,)
        return torch.stack([torch.zeros_like(s), s], dim=1)


class RetrievalHead(nn.Module):
    """Learned score of (h_query - h_gallery) per gallery item; softmax lives in the loss.

    The paper's C_R (pair_head "linear"). One linear layer: w·(h_q - h_g) + c = w·h_q - w·h_g + c.
    For one query the w·h_q term is the same for every gallery item, so the gallery is ranked by
    -w·h_g: the same order for every query, and chance retrieval (docs/training.md).

    Works for any gallery size. h_query may be (B, D) with h_gallery (B, k, D), or, for
    scoring Q queries against one shared gallery, h_query (Q, 1, D) and h_gallery (1, G, D)
    (broadcast), giving (Q, G).
    """

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBED_DIM, 1))

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_query.dim() == 2:
            h_query = h_query.unsqueeze(1)
        return self.layers(h_query - h_gallery).squeeze(-1)  # (B, k)


def make_head(cfg: ModelConfig) -> nn.Module:
    if cfg.task == "matching":
        if cfg.head == "concat_mlp":
            return MatchingMLPHead(cfg.k, cfg.head_dropout)
        if cfg.head == "diff_mlp":
            return DiffMLPHead(cfg.head_dropout)
        return MatchingHead(cfg.k, cfg.head_dropout)
    diff = cfg.pair_head == "diff_mlp"
    if cfg.task == "verification":
        return (
            VerificationScoreHead(DiffMLPHead(cfg.head_dropout))
            if diff
            else VerificationHead(cfg.head_dropout)
        )
    return DiffMLPHead(cfg.head_dropout) if diff else RetrievalHead(cfg.head_dropout)


# ----------------------------------------------------------------------------- model


class AML(Method):
    """Both branches, the generator(s), the task head and the modality discriminator.

    The discriminator lives here for convenience (one state_dict) but is trained by its own
    optimiser (``opt_d``): ``encoder_parameters()`` is the encoders/generator/head group
    (``opt_g``, which follows the LR schedule). Built from a run's TrainConfig (model settings
    ``model.*``, loss ``loss.*``, T = ``d_steps``) or, for tests, from a ModelConfig alone.
    """

    name = "aml"
    default_score = "l2"
    log_terms = ("L_total", "L_dis", "L_metric", "L_cls", "L_adv")
    optimizer_names = ("opt_g", "opt_d")
    embed_dim = EMBED_DIM

    def __init__(self, cfg=None, labels=None):
        run_cfg = cfg if cfg is not None and hasattr(cfg, "model") else None
        super().__init__(run_cfg, labels)
        self.cfg = cfg = run_cfg.model if run_cfg is not None else (cfg or ModelConfig())
        self.audio_branch = modality_branch("audio", cfg)  # the paper's, or a frozen encoder's adapter
        self.visual_branch = modality_branch("face", cfg)
        self.generator = Generator(cfg.generator_dropout, cfg.leaky_slope)
        # With shared_generator the face generator *is* the audio one (parameters counted once).
        self.face_generator = (
            self.generator if cfg.shared_generator else Generator(cfg.generator_dropout, cfg.leaky_slope)
        )
        self.head = make_head(cfg)
        self.discriminator = ModalityDiscriminator(cfg.discriminator_dropout, cfg.clip_value)
        init_weights(self)
        self.loss_fn = AMLLoss(run_cfg.loss if run_cfg is not None else LossConfig(task=cfg.task))

    # -- per-modality embeddings; inputs are (N, C, H, W), any memory format
    def features_audio(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 224, 125) -> (N, 3200): branch features before the generator."""
        return self.audio_branch(x).flatten(1)

    def features_face(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) -> (N, 3200): branch features before the generator."""
        return self.visual_branch(x).flatten(1)

    def embed_audio(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 224, 125) -> h (N, 128)."""
        return self.generator(self.features_audio(x))

    def embed_face(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) -> h (N, 128)."""
        return self.face_generator(self.features_face(x))

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        check_modality(modality)
        return self.embed_audio(x) if modality == "audio" else self.embed_face(x)

    def features(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        check_modality(modality)
        return self.features_audio(x) if modality == "audio" else self.features_face(x)

    def embed_with_features(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, 3200-d branch features) with one branch pass."""
        f = self.features(modality, x)
        gen = self.generator if modality == "audio" else self.face_generator
        return gen(f), f

    def encoder_parameters(self):
        """Everything the encoder/generator/head optimiser updates (not the discriminator)."""
        skip = {id(p) for p in self.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def forward(self, query: torch.Tensor, gallery: torch.Tensor, direction: str = "a2v") -> dict:
        """query (B, C, H, W); gallery (B, k, C', H', W') or, for k = 1, (B, C', H', W').

        direction 'a2v': audio query, face gallery; 'v2a': face query, audio gallery.
        Returns h_query (B, 128), h_gallery (B, k, 128), logits ((B, k) for matching and
        retrieval, (B, 2) for verification) and the direction (the losses need it to tell
        the modalities apart).
        """
        out = super().forward(query, gallery, direction)
        out["logits"] = self.head(out["h_query"], out["h_gallery"])
        return out

    # -- the seam: optimisers, one step, head scores
    def optimizers(self, cfg) -> dict:
        return {
            "opt_g": torch.optim.Adam(
                self.encoder_parameters(), lr=cfg.lr_start, weight_decay=cfg.weight_decay
            ),
            "opt_d": torch.optim.Adam(
                self.discriminator.parameters(), lr=cfg.lr_dis, weight_decay=cfg.weight_decay
            ),
        }

    def ddp_ignored(self) -> list[str]:
        # its own optimiser and backward pass: DDP handles the rest, D's grads are averaged by hand
        return [f"discriminator.{n}" for n, _ in self.discriminator.named_parameters()]

    def train_step(self, batch, optimizers: dict, ctx) -> dict[str, float]:
        """Algorithm 1's step on one batch: forward once; T = ``ctx.d_steps`` discriminator steps
        on the detached h (each followed by weight clipping to ±clip_value when set); one step of
        the encoders/generator/head on β·L_metric + γ·L_cls − L_dis with D held fixed. Returns the
        loss terms as floats (``L_dis_step``: the last D step's L_dis)."""
        opt_g, opt_d = optimizers["opt_g"], optimizers["opt_d"]
        out = ctx.forward(batch.query, batch.gallery, batch.direction)
        d_terms = {}
        if self.loss_fn.uses_discriminator:
            for _ in range(ctx.d_steps):
                d_terms = self.loss_fn.discriminator_loss(out, self.discriminator)
                opt_d.zero_grad(set_to_none=True)
                d_terms["L_dis"].backward()
                if ctx.average_grads is not None:
                    ctx.average_grads(self.discriminator.parameters())
                opt_d.step()
                if self.cfg.clip_value:
                    self.discriminator.clip_weights(self.cfg.clip_value)
        e_terms = self.loss_fn.encoder_loss(out, batch.label, self.discriminator)
        opt_g.zero_grad(set_to_none=True)
        e_terms["objective"].backward()
        opt_g.step()
        terms = {k: float(e_terms[k].detach()) for k in self.log_terms}
        if d_terms:
            terms["L_dis_step"] = float(d_terms["L_dis"].detach())
        return terms

    def head_scores(self, task, k, direction, h_query, h_gallery):
        """The head the run trained, on the lists it was trained for: C_M at the trained k and
        direction (matching), C_V (verification: logit same - logit different), C_R (retrieval)."""
        if task != self.cfg.task or direction != getattr(self.run_config, "direction", direction):
            return None
        if task == "matching":
            return self.head(h_query, h_gallery) if k == self.cfg.k else None
        if task == "verification":
            logits = self.head(h_query, h_gallery)
            return logits[:, 1] - logits[:, 0]
        return self.head(h_query, h_gallery)
