"""A trained method on raw media: load, embed, match, score, export (``avtrain embed|match|score|export``).

* ``model``: :class:`~avtrain.serve.model.FaceVoiceModel` (build-shards' preprocessing + the method's
  ``embed``) and :func:`~avtrain.serve.model.load_model` (a run or an export directory);
* ``export``: the export format (``model.safetensors`` + ``config.json``), written and read back;
* ``journal``: the batcher and the ``OUT.partial`` resume journal of embed and score runs;
* ``embed``: files to embeddings, and the embed output format (.npz / .parquet);
* ``match``: one query against a gallery of the other modality;
* ``pairs``: pair lists (FAME, labelled, Learnable-PINs CSV) and ``safe_join``;
* ``score``: a pair list scored, with AUC/EER for labelled lists;
* ``errors``: :class:`~avtrain.serve.errors.InferenceError`.

Scores are ``-L2`` between the method's embeddings (``avtrain evaluate``'s rule; AML: 128-d): higher
= more likely the same person. Bad inputs (missing, empty or corrupt files, silent or too-short
audio, images without a face, unsafe list paths) become rejects with a one-line reason; they never
stop a run.
"""
