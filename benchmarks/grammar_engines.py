"""Grammar engines for structured output on our vocabularies: llguidance, outlines-core, xgrammar.

For each engine, vocabulary (256 one-byte ids, 128 of them not UTF-8 alone; a byte-level BPE
of 1024 ids trained here on README.md) and JSON schema of :data:`SCHEMAS`: does the engine
take the vocabulary; compile time (schema to first mask, median of 3); time per token
(advance, then the next mask as a (V+1,) bool array: the ids + one end id), mean and p99;
validity: random walks (ids drawn uniformly among those allowed, the end id included) until
the end or a step budget, every finished walk's bytes decoded as UTF-8, ``json.loads``-ed and
validated with ``jsonschema``. Each engine's bit mask is unpacked alike; "llguidance
(grammar.py)" is what serve ships. Then ``Generation`` on a model of every family: decoding
tokens/s with and without a constraint (same seed and token budget, one thread).

    python benchmarks/grammar_engines.py [--walks 20] [--steps 3000] [--tokens 128]
        [--repeats 3] [--full] [--out runs/bench-grammar-engines.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from importlib.metadata import distributions
from pathlib import Path

import jsonschema
import llguidance
import numpy as np
import torch

from h2q_tui.config import resolve
from h2q_tui.data.tokenizer import byte_level_table
from h2q_tui.generation import grammar
from h2q_tui.generation.constraint import constrained_logits
from h2q_tui.generation.generate import Generation, use_decoding_threads
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model
from h2q_tui.system import hardware

REPO = Path(__file__).resolve().parent.parent
SHORT = {"type": "string", "maxLength": 8}
INTEGER, NUMBER = {"type": "integer"}, {"type": "number"}


def obj(closed: bool = False, **properties) -> dict:
    """An object schema requiring every property (closed: no others allowed)."""
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {**schema, "additionalProperties": False} if closed else schema


SCHEMAS: dict[str, dict] = {
    "flat": obj(True, name=SHORT, age=INTEGER, ok={"type": "boolean"}),
    "nested": obj(user=obj(id=INTEGER, email=SHORT), meta=obj(n=NUMBER)),
    "arrays": obj(
        xs={"type": "array", "items": INTEGER, "maxItems": 5},
        names={"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3},
    ),
    "enums": obj(
        color={"enum": ["red", "green", "blue", 7, None]},
        size={"type": "string", "enum": ["S", "M", "L"]},
    ),
    "numbers": obj(x=NUMBER, n={"type": "integer", "minimum": 0, "maximum": 100}),
    "top-level number": NUMBER,
    "json": grammar.ANY_OBJECT,
}


def unpack(words: np.ndarray, size: int) -> np.ndarray:
    """A (size,) bool mask from a bit mask of 32-bit words (bit i of word w: id 32w + i),
    as grammar.py unpacks llguidance's."""
    bits = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")
    return bits[:size].view(np.bool_)


class Llguidance:
    name = "llguidance"

    def __init__(self, vocabulary: list[bytes]) -> None:
        self.size = len(vocabulary) + 1
        self.tokenizer = grammar._tokenizer(vocabulary)
        self.words = np.zeros((self.size + 31) // 32, dtype=np.uint32)

    def start(self, schema: dict) -> None:
        text = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        self.matcher = llguidance.LLMatcher(self.tokenizer, text, log_level=0)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())

    def restart(self) -> None:
        self.matcher.reset()

    def advance(self, token: int) -> None:
        assert self.matcher.consume_token(token), self.matcher.get_error()

    def mask(self) -> np.ndarray:
        self.matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        return unpack(self.words, self.size)


class Shipped:
    """grammar.py's JsonConstraint as the generator uses it (its per-token work)."""

    name = "llguidance (grammar.py)"

    def __init__(self, vocabulary: list[bytes]) -> None:
        self.vocabulary = vocabulary
        self.logits = torch.zeros(len(vocabulary))

    def start(self, schema: dict) -> None:
        self.schema, self.constraint = schema, grammar.json_constraint(schema, self.vocabulary)

    def restart(self) -> None:
        self.start(self.schema)

    def advance(self, token: int) -> None:
        self.constraint.advance(token)

    def mask(self) -> np.ndarray:
        if self.constraint.finished:  # only the end
            return np.arange(len(self.vocabulary) + 1) == len(self.vocabulary)
        return constrained_logits(self.logits, self.constraint).numpy() > -np.inf


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, vocabulary: list[bytes]) -> None:
        import outlines_core  # only here: optional (tests load this script without it)

        self.oc, self.size = outlines_core, len(vocabulary) + 1
        ids: dict[bytes, list[int]] = {}
        for token, piece in enumerate(vocabulary):
            ids.setdefault(piece, []).append(token)
        self.vocabulary = outlines_core.Vocabulary(len(vocabulary), ids)
        self.words = np.zeros((self.size + 31) // 32, dtype=np.uint32)

    def start(self, schema: dict) -> None:
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), "")
        self.guide = self.oc.Guide(self.oc.Index(regex, self.vocabulary))

    def restart(self) -> None:
        self.guide.reset()

    def advance(self, token: int) -> None:
        self.guide.advance(token, return_tokens=False)

    def mask(self) -> np.ndarray:
        self.words.fill(0)
        self.guide.write_mask_into(self.words.ctypes.data, self.words.size, 4)
        return unpack(self.words, self.size)


class Xgrammar:
    name = "xgrammar"

    def __init__(self, vocabulary: list[bytes]) -> None:
        import xgrammar  # only here: optional (tests load this script without it)

        self.xg, self.size = xgrammar, len(vocabulary) + 1
        tokens = [*vocabulary, b"<end>"]  # raw bytes per id (VocabType.RAW, the default)
        info = xgrammar.TokenizerInfo(tokens, vocab_size=self.size, stop_token_ids=[self.size - 1])
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.bits = xgrammar.allocate_token_bitmask(1, self.size)

    def start(self, schema: dict) -> None:
        compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        self.matcher = self.xg.GrammarMatcher(compiled)

    def restart(self) -> None:
        self.matcher.reset()

    def advance(self, token: int) -> None:
        assert self.matcher.accept_token(token)

    def mask(self) -> np.ndarray:
        self.matcher.fill_next_token_bitmask(self.bits)
        return unpack(self.bits[0].numpy().view(np.uint32), self.size)


ENGINES = (Llguidance, Shipped, OutlinesCore, Xgrammar)


def bpe_vocabulary(size: int) -> list[bytes]:
    """Each id's bytes in a byte-level BPE tokenizer of ``size`` ids trained on README.md."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # only here

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train([str(REPO / "README.md")], trainer)
    table = byte_level_table()
    vocabulary = [bytes(table[c] for c in tokenizer.id_to_token(i)) for i in range(size)]
    sample = 'héllo → {"naïve": [1, 2]} 日本'
    assert b"".join(vocabulary[i] for i in tokenizer.encode(sample).ids) == sample.encode()
    return vocabulary


def check(text: bytes, schema: dict) -> str | None:
    """Why ``text`` is not a JSON document valid under ``schema`` (None when it is)."""
    try:
        jsonschema.validate(json.loads(text.decode("utf-8")), schema)
    except (UnicodeDecodeError, ValueError, jsonschema.ValidationError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]} in {text[:60]!r}"
    return None


def walk(engine, vocabulary: list[bytes], rng: random.Random, steps: int):
    """One random walk from the start: (step seconds, its bytes or None when unfinished)."""
    engine.restart()
    mask = engine.mask()
    end, out, times = len(vocabulary), [], []
    for _ in range(steps):
        token = rng.choice(np.flatnonzero(mask).tolist())
        if token == end:
            return times, b"".join(vocabulary[t] for t in out)
        started = time.perf_counter()
        engine.advance(token)
        mask = engine.mask()
        times.append(time.perf_counter() - started)
        out.append(token)
    return times, None


def compile_seconds(engine, schema: dict, repeats: int = 3) -> float:
    """Median time from the schema to the first mask."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.start(schema)
        engine.mask()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_engine(kind, vocabulary: list[bytes], walks: int, steps: int) -> dict:
    """One engine on one vocabulary: per schema, compile, per-token time, walk validity."""
    try:
        engine = kind(vocabulary)
    except ImportError as exc:
        return {"engine": kind.name, "vocabulary": f"not installed ({exc.name})", "schemas": {}}
    except Exception as exc:  # noqa: BLE001 - any refusal of the vocabulary is the finding
        return {"engine": kind.name, "vocabulary": f"refused: {str(exc)[:120]}", "schemas": {}}
    rows = {}
    for name, schema in SCHEMAS.items():
        rng, times, finished, failures = random.Random(0), [], 0, []
        try:
            compiled = compile_seconds(engine, schema)
            for _ in range(walks):
                steps_s, text = walk(engine, vocabulary, rng, steps)
                times += steps_s
                problem = None if text is None else check(text, schema)
                finished += text is not None
                failures += [problem] if problem else []
        except Exception as exc:  # noqa: BLE001 - an engine that fails a schema is the finding
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            continue
        ordered = sorted(times) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        rows[name] = dict(compile_ms=1000 * compiled, token_us_mean=1e6 * statistics.fmean(ordered))
        rows[name].update(token_us_p99=1e6 * p99, steps=len(times), walks=walks, finished=finished)
        rows[name].update(invalid=len(failures), first_invalid=(failures or [None])[0])
    return {"engine": kind.name, "vocabulary": "accepted", "schemas": rows}


HEADS = ["model.d_model=64", "model.n_heads=2"]
TINY = {  # family: (preset, overrides), as tests/test_decode_speed.py builds them
    "gpt": ("gpt-cpu", HEADS),
    "microstream": ("tiny", []),
    "h2q-transformer": ("h2q-transformer-cpu", ["model.d_model=128", "model.factor_size=16"]),
    "qrlm": ("qrlm-cpu", ["model.d_model=64", "model.factor_size=16"]),
    "hamiltonian-llm": ("hamiltonian-llm", [*HEADS, "model.separator_token=10"]),
}
TINY_SIZE = ["model.n_layers=2", "model.context=256"]
FULL = {f: p for f, (p, _) in TINY.items()} | {"microstream": "microstream-cpu"}  # --full


def generation_rate(model, schema: dict | None, tokens: int) -> tuple[float, int, str]:
    """Decoding tokens/s after the first token (prefill and constraint build excluded) of one
    seeded generation, its token count and stop reason."""
    codec = Codec()
    constraint = None if schema is None else grammar.json_constraint(schema, codec.vocabulary(256))
    sampling = SamplingConfig(max_new_tokens=tokens, seed=0)
    run = Generation(model, codec, "Answer in JSON: ", sampling, constraint=constraint)
    for _ in run:
        pass
    stats = run.stats
    rate = (stats.new_tokens - 1) / (stats.seconds - stats.first_token_s)
    return rate, stats.new_tokens, stats.stop_reason


def measure_generation(family: str, full: bool, tokens: int, repeats: int) -> dict:
    """One family: decoding tokens/s unconstrained and constrained, interleaved, medians."""
    preset, overrides = (
        (FULL[family], []) if full else (TINY[family][0], TINY[family][1] + TINY_SIZE)
    )
    torch.manual_seed(0)
    model = build_model(resolve(preset, overrides).model).eval()
    string = {"type": "string", "minLength": tokens, "maxLength": tokens}  # all constrained
    variants = {"none": None, "flat": SCHEMAS["flat"], "json": SCHEMAS["json"], "string": string}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, tuple[int, str]] = {}
    generation_rate(model, None, 8)  # warm-up
    for _ in range(repeats):
        for name, schema in variants.items():
            rate, count, reason = generation_rate(model, schema, tokens)
            rates[name].append(rate)
            counts[name] = (count, reason)
    row: dict = {"family": family, "preset": preset, "overrides": overrides, "full_size": full}
    for name in variants:
        row[f"{name}_tokens_per_s"] = statistics.median(rates[name])
        row[f"{name}_tokens"], row[f"{name}_stop"] = counts[name]
    return row


def print_engines(vocabulary: str, rows: list[dict]) -> None:
    print(f"\n{vocabulary}: compile = schema to first mask; a token = advance + next mask")
    print("| engine | schema | compile (ms) | µs/token mean | p99 | walks finished | invalid |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        if not row["schemas"]:
            print(f"| {row['engine']} | vocabulary {row['vocabulary']} | | | | | |")
        for name, r in row["schemas"].items():
            if "error" in r:
                print(f"| {row['engine']} | {name} | {r['error'][:60]} | | | | |")
                continue
            print(
                f"| {row['engine']} | {name} | {r['compile_ms']:.1f} | {r['token_us_mean']:.0f} | "
                f"{r['token_us_p99']:.0f} | {r['finished']}/{r['walks']} | {r['invalid']} |"
            )


def print_generation(rows: list[dict], tokens: int) -> None:
    size = "CPU presets at full size" if rows[0]["full_size"] else "tiny models"
    print(f"\nGeneration ({size}), up to {tokens} new tokens, seed 0, 1 thread: decoding tok/s")
    print("after the first token (tokens, stop reason; cost = 1 − constrained / none)")
    print("| family | no constraint | schema flat | format json | string (all constrained) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        none = r["none_tokens_per_s"]
        cells = [f"{none:,.0f} ({r['none_tokens']}, {r['none_stop']})"]
        for n in ("flat", "json", "string"):
            rate = r[f"{n}_tokens_per_s"]
            info = f"{r[f'{n}_tokens']}, {r[f'{n}_stop']}; {100 * (1 - rate / none):.0f}%"
            cells.append(f"{rate:,.0f} ({info})")
        print(f"| {r['family']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--walks", type=int, default=20, help="walks per schema (0: no engines)")
    parser.add_argument("--steps", type=int, default=3000, help="step budget of one walk")
    parser.add_argument("--bpe", type=int, default=1024, help="BPE vocabulary size (0: skip)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="presets at full size, not tiny")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-grammar-engines.json")
    args = parser.parse_args()
    use_decoding_threads(1)
    vocabularies = {"bytes (256)": [bytes([i]) for i in range(256)]}
    if args.bpe and args.walks:
        vocabularies[f"byte-level BPE ({args.bpe})"] = bpe_vocabulary(args.bpe)
    engines = {
        name: [measure_engine(kind, vocab, args.walks, args.steps) for kind in ENGINES]
        for name, vocab in vocabularies.items()
        if args.walks
    }
    generation = [measure_generation(f, args.full, args.tokens, args.repeats) for f in TINY]
    machine = hardware.machine_info()  # cpu_model: /proc/cpuinfo's model name, as lscpu shows
    print(f"machine: {machine['cpu_model']}, {os.cpu_count()} cores, torch {torch.__version__}")
    names = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}
    versions = {m: names.get(m, "absent") for m in ("llguidance", "outlines-core", "xgrammar")}
    print("engines:", ", ".join(f"{m} {v}" for m, v in versions.items()))
    for name, rows in engines.items():
        print_engines(name, rows)
    print_generation(generation, args.tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(machine=machine, versions=versions, schemas=SCHEMAS, walks=args.walks)
    payload.update(engines=engines, generation=generation, tokens=args.tokens)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
