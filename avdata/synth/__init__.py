"""A synthetic face-voice corpus in the real VoxCeleb1 layouts.

`synth_corpus(OUT)` writes a small, fully deterministic stand-in for VoxCeleb1 +
VGGFace so that the whole pipeline (scan, extract, train, evaluate) can run
end to end without any licensed data, and so that a face-voice model has a
correspondence to learn that generalises to identities it has never seen.

Layout (the same as the official downloads)::

    OUT/vox1_meta.csv                       VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set (tab-separated)
    OUT/wav/idNNNNN/YTID/NNNNN.wav          16 kHz mono 16-bit PCM, 4-8 s
    OUT/faces/NAME/YTID/NNNNNNN.jpg         face photos of varied size, framing and background
    OUT/mp4/idNNNNN/YTID/NNNNN.mp4          (videos=True) 2-3 s talking head, MPEG-4 Part 2 + AAC
    OUT/attributes.json                     ground-truth hidden attributes (see below)

Generative model
----------------
Each identity draws hidden attributes from its own random stream
``default_rng([seed, 0, identity_index])``:

* ``gender`` (m/f, from the first name) and ``age`` (20-70 years);
* five standard-normal latent factors, clipped to +-2.2:
  ``pitch``, ``vocal_tract``, ``brightness``, ``breathiness``, ``tempo``.

Every factor shapes the voice AND the face, monotonically, so that a model that
learns "low voice <-> wide, bearded face" on training identities can apply the
same rule to new ones:

============  ============================================  ==========================================
factor        voice                                         face
============  ============================================  ==========================================
gender        F0 ~118 Hz (m) / ~208 Hz (f); formants x1.16  beard only for men, long hair for women,
              for women                                     redder lips
pitch         F0 x exp(0.20 * pitch)                        face width (low voice -> wider face),
                                                            eyebrow thickness, beard density (men),
                                                            hair length (women)
vocal_tract   formants x exp(-0.14 * vocal_tract)           face length (longer tract -> longer face,
              (longer tract -> lower formants)              lower nose and mouth)
brightness    spectral tilt: the source's 2-pole low-pass   skin tone (bright voice -> lighter skin)
              corner (bright voice -> more treble)
breathiness   turbulent noise above 1.5 kHz, aspiration     hair colour (breathy -> lighter hair:
              between harmonics, wider formant bandwidths   black, brown, auburn, blond)
tempo         syllable rate x exp(0.25 * tempo)             eye size (fast talker -> bigger eyes)
age           F0 jitter and 5.5 Hz tremor grow with age,    grey hair, forehead lines, receding
              slight F0 shift                               hairline (men)
============  ============================================  ==========================================

Voice: a Rosenberg glottal pulse train (time-varying F0 with phrase declination,
accents, jitter, tremor) plus pitch-synchronous aspiration -> two-pole spectral
tilt -> per syllable, a cascade of five formant resonators (eight vowels) plus
breath hiss, with fricative/plosive onsets, syllable envelopes and pauses. Each
clip draws its own phrase, a ~3% pitch and ~6% rate offset, loudness and a
background-noise level (25-50 dB SNR, sometimes mains hum), so clips of one
identity differ but stay recognisable.

Face: painted directly at the output resolution with anti-aliased soft masks in
a face coordinate frame (so rotation and scale cost nothing): shoulders and neck,
hair behind the head, a shaded skin ellipse with specular sheen, ears, eye
sockets, eyes (sclera, iris, pupil, lids, highlight), eyebrows, a shaded nose
with nostrils, lips, beard and fringe, then mild blur and sensor noise. Each
photo draws its own size (160-640 px a side), pose (roll/yaw/nod), scale,
position, lighting, background (gradient, blotches, shapes); clothing stays the
same within one YouTube video. The face is always >= ~84 px wide. About 1 photo
in 25 is deliberately flawed (face half out of frame, occluded, or badly out of
focus), as in real scraped sets. facenet-pytorch MTCNN finds a face in ~95-97%
of the photos (measured over seeds 0-2: 97.1%, 95.4%, 95.8%, bench/synth_faces.py):
about as many misses as flawed photos, and they exercise the "no face" path downstream.
Nothing is filtered through a detector.

Videos (``videos=True``) show the same painted person, drifting, zooming and
nodding slightly, with the mouth opening on the voice's vowels; the audio track is
a fresh utterance in the identity's voice. They are encoded with the ffmpeg
binary of imageio-ffmpeg with bit-exact flags, one thread and a fixed quantiser,
so the bytes are reproducible.

``attributes.json`` is ground truth for tests and analysis only: nothing in
training reads it. `identity_attributes(index, seed)` recomputes one entry.

Everything is derived from ``numpy.random.default_rng([seed, kind, identity,
file])`` streams, so every file is byte-identical for the same seed and does
not depend on the order in which files are produced.

Package layout
--------------
``identity``  names (the matching split of a name comes from :func:`avdata.corpora.voxceleb1.matching_split`),
              hidden attributes and the voice/face parameters derived from them;
``voice``     the voice synthesiser (:func:`synth_voice`);
``face``      the face painter (:func:`render_face`; one painter per facial feature);
``video``     talking-head videos (face + voice + ffmpeg);
``corpus``    file layout and :func:`synth_corpus`.
"""

from avdata.synth.corpus import META_HEADER, synth_corpus
from avdata.synth.face import render_face
from avdata.synth.identity import (
    IdentityAttributes,
    SynthError,
    corpus_attributes,
    identity_attributes,
    matching_group_sizes,
    synth_names,
)
from avdata.synth.voice import SAMPLE_RATE, synth_voice

__all__ = [
    "META_HEADER",
    "SAMPLE_RATE",
    "IdentityAttributes",
    "SynthError",
    "corpus_attributes",
    "identity_attributes",
    "matching_group_sizes",
    "render_face",
    "synth_corpus",
    "synth_names",
    "synth_voice",
]
