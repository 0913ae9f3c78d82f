"""The names of the tasks and directions every list, run and metric uses: their one owner (a module
with no imports, so the CLIs can offer them as choices without loading pandas or torch)."""

TASKS = ("matching", "verification", "retrieval")
DIRECTIONS = {"a2v": ("audio", "face"), "v2a": ("face", "audio")}  # (query, gallery) modalities
