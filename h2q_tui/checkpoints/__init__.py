"""Checkpoint folders on disk: writing, finding, checking and loading them.

Below every package that reads or writes weights (training, generation, crystallization,
serving), so none of them imports another to get at a checkpoint::

    from h2q_tui import checkpoints
    loaded = checkpoints.load_checkpoint("runs/X")  # run dir, checkpoint folder or file
    loaded.info, loaded.model, loaded.tokenizer      # crystallized: on their integers (CPU)
"""

from h2q_tui.checkpoints.crystal_weights import account as crystal_account
from h2q_tui.checkpoints.find import checkpoint_problem, find_checkpoint, resolve_checkpoint
from h2q_tui.checkpoints.layout import (
    BEST,
    FORMAT,
    FORMAT_VERSION,
    LATEST,
    STATE,
    STEP_NAME,
    TOKENIZER,
    WEIGHTS,
    CheckpointInfo,
    file_crc,
    tensor_checksums,
    tensor_crc,
)
from h2q_tui.checkpoints.load import (
    load_model_from,
    load_state,
    load_weights,
    read_info,
    tokenizer_of,
)
from h2q_tui.checkpoints.loader import Loaded, load_checkpoint
from h2q_tui.checkpoints.save import remove_leftovers, save_checkpoint

__all__ = [
    "BEST",
    "FORMAT",
    "FORMAT_VERSION",
    "LATEST",
    "STATE",
    "STEP_NAME",
    "TOKENIZER",
    "WEIGHTS",
    "CheckpointInfo",
    "checkpoint_problem",
    "crystal_account",
    "file_crc",
    "find_checkpoint",
    "Loaded",
    "load_checkpoint",
    "load_model_from",
    "load_state",
    "load_weights",
    "read_info",
    "remove_leftovers",
    "resolve_checkpoint",
    "save_checkpoint",
    "tensor_checksums",
    "tensor_crc",
    "tokenizer_of",
]
