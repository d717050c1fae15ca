"""Writing a checkpoint out in other programs' formats: a GPT as a llama.cpp GGUF file.

On the services floor beside crystal: it reads checkpoints through the one loader and
writes files; nothing below it knows it exists.
"""

# --type of ``h2q-tui export gguf``: the type of the 2-D weights (here, so --help needs no numpy)
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
