"""Grammar engines for structured output on our vocabularies: llguidance, outlines-core, xgrammar.

For each engine and vocabulary (the 256-symbol byte vocabulary, where each id is one byte
and ids 128..255 are not UTF-8 alone, and a small byte-level BPE tokenizer trained here on
README.md), and each JSON schema of :data:`SCHEMAS`:
- does the engine take the vocabulary at all;
- compile time: from the schema to the first mask (median over the walks);
- time per token: advance by the chosen id and compute the next mask as a (V+1,) bool
  tensor (the model's ids + one end id), mean and p99 over every step of every walk;
- validity: random walks (each id drawn uniformly among those allowed, the end id
  included) until the end id or a step budget; every finished walk's bytes must decode as
  UTF-8, ``json.loads`` and validate with ``jsonschema``.
Each engine is driven through its bit-mask API into the same bool tensor; the row
"llguidance (grammar.py)" is what serve ships (:class:`~h2q_tui.generation.grammar.JsonConstraint`).

A second table: ``Generation`` on a tiny model of every family, tokens/s with and without the
constraint (same seed, same token budget, one thread), the constraint built beforehand.

    python benchmarks/grammar_engines.py [--walks 20] [--steps 3000] [--tokens 128]
        [--repeats 3] [--out runs/bench-grammar-engines.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

import jsonschema
import llguidance
import outlines_core
import torch
import xgrammar

from h2q_tui.config import resolve
from h2q_tui.generation import grammar
from h2q_tui.generation.constraint import constrained_logits
from h2q_tui.generation.generate import Generation, use_decoding_threads
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model
from h2q_tui.system import hardware

REPO = Path(__file__).resolve().parent.parent
SHORT = {"type": "string", "maxLength": 8}
SCHEMAS: dict[str, dict] = {
    "flat": {
        "type": "object",
        "properties": {"name": SHORT, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["name", "age", "ok"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "email": SHORT},
                "required": ["id", "email"],
            },
            "meta": {"type": "object", "properties": {"n": {"type": "number"}}},
        },
        "required": ["user", "meta"],
    },
    "arrays": {
        "type": "object",
        "properties": {
            "xs": {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
            "names": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3},
        },
        "required": ["xs", "names"],
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue", 7, None]},
            "size": {"type": "string", "enum": ["S", "M", "L"]},
        },
        "required": ["color", "size"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "x": {"type": "number"},
            "n": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["x", "n"],
    },
    "top-level number": {"type": "number"},
    "json": grammar.ANY_OBJECT,
}
SHIFTS = torch.arange(32, dtype=torch.int32)


def unpack(bits: torch.Tensor, size: int) -> torch.Tensor:
    """A (size,) bool mask from a bit mask of int32 words (bit i of word w: id 32w + i)."""
    return ((bits.unsqueeze(-1) >> SHIFTS) & 1).flatten()[:size].bool()


class Llguidance:
    name = "llguidance"

    def __init__(self, vocabulary: list[bytes]) -> None:
        self.size = len(vocabulary) + 1
        self.tokenizer = grammar._tokenizer(vocabulary)
        self.bits = torch.zeros((self.size + 31) // 32, dtype=torch.int32)

    def start(self, schema: dict) -> None:
        text = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        self.matcher = llguidance.LLMatcher(self.tokenizer, text, log_level=0)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())

    def advance(self, token: int) -> None:
        assert self.matcher.consume_token(token), self.matcher.get_error()

    def mask(self) -> torch.Tensor:
        self.matcher.unsafe_compute_mask_ptr(self.bits.data_ptr(), self.bits.numel() * 4)
        return unpack(self.bits, self.size)


class Shipped:
    """grammar.py's JsonConstraint as the generator uses it (its per-token work)."""

    name = "llguidance (grammar.py)"

    def __init__(self, vocabulary: list[bytes]) -> None:
        self.vocabulary = vocabulary
        self.logits = torch.zeros(len(vocabulary))

    def start(self, schema: dict) -> None:
        self.constraint = grammar.json_constraint(schema, self.vocabulary)

    def advance(self, token: int) -> None:
        self.constraint.advance(token)

    def mask(self) -> torch.Tensor:
        if self.constraint.finished:  # only the end
            return torch.arange(len(self.vocabulary) + 1) == len(self.vocabulary)
        return constrained_logits(self.logits, self.constraint) > float("-inf")


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, vocabulary: list[bytes]) -> None:
        self.size = len(vocabulary) + 1
        ids: dict[bytes, list[int]] = {}
        for token, piece in enumerate(vocabulary):
            ids.setdefault(piece, []).append(token)
        self.vocabulary = outlines_core.Vocabulary(len(vocabulary), ids)
        self.bits = torch.zeros((self.size + 31) // 32, dtype=torch.int32)

    def start(self, schema: dict) -> None:
        regex = outlines_core.json_schema.build_regex_from_schema(json.dumps(schema), "")
        self.guide = outlines_core.Guide(outlines_core.Index(regex, self.vocabulary))

    def advance(self, token: int) -> None:
        self.guide.advance(token, return_tokens=False)

    def mask(self) -> torch.Tensor:
        self.bits.zero_()
        self.guide.write_mask_into(self.bits.data_ptr(), self.bits.numel(), 4)
        return unpack(self.bits, self.size)


class Xgrammar:
    name = "xgrammar"

    def __init__(self, vocabulary: list[bytes]) -> None:
        self.size = len(vocabulary) + 1
        info = xgrammar.TokenizerInfo(
            list(vocabulary) + [b"<end>"],
            xgrammar.VocabType.RAW,
            vocab_size=self.size,
            stop_token_ids=[len(vocabulary)],
        )
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.bits = xgrammar.allocate_token_bitmask(1, self.size)

    def start(self, schema: dict) -> None:
        compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        self.matcher = xgrammar.GrammarMatcher(compiled)

    def advance(self, token: int) -> None:
        assert self.matcher.accept_token(token)

    def mask(self) -> torch.Tensor:
        self.matcher.fill_next_token_bitmask(self.bits)
        return unpack(self.bits[0], self.size)


ENGINES = (Llguidance, Shipped, OutlinesCore, Xgrammar)


def byte_level_table() -> dict[str, int]:
    """The byte-level BPE alphabet: each printable byte stands for itself, the other bytes
    for the characters from U+0100 on, in byte order (how the tokenizer spells bytes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def bpe_vocabulary(size: int) -> list[bytes]:
    """Each id's bytes in a byte-level BPE tokenizer of ``size`` ids trained on README.md."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # only here

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train([str(REPO / "README.md")], trainer)
    table = byte_level_table()
    return [
        bytes(table[c] for c in tokenizer.id_to_token(i)) for i in range(tokenizer.get_vocab_size())
    ]


def check(text: bytes, schema: dict) -> str | None:
    """Why ``text`` is not a JSON document valid under ``schema`` (None when it is)."""
    try:
        jsonschema.validate(json.loads(text.decode("utf-8")), schema)
    except (UnicodeDecodeError, ValueError, jsonschema.ValidationError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]} in {text[:60]!r}"
    return None


def walk(engine, schema: dict, vocabulary: list[bytes], rng: random.Random, steps: int):
    """One random walk: (compile seconds, step seconds, its bytes or None when unfinished)."""
    started = time.perf_counter()
    engine.start(schema)
    mask = engine.mask()
    compiled = time.perf_counter() - started
    end, out, times = len(vocabulary), [], []
    for _ in range(steps):
        token = rng.choice(mask.nonzero().flatten().tolist())
        if token == end:
            return compiled, times, b"".join(vocabulary[t] for t in out)
        started = time.perf_counter()
        engine.advance(token)
        mask = engine.mask()
        times.append(time.perf_counter() - started)
        out.append(token)
    return compiled, times, None


def measure_engine(kind, vocabulary: list[bytes], walks: int, steps: int) -> dict:
    """One engine on one vocabulary: per schema, compile, per-token time, walk validity."""
    try:
        engine = kind(vocabulary)
    except Exception as exc:  # noqa: BLE001 - any refusal of the vocabulary is the finding
        return {"engine": kind.name, "vocabulary": f"refused: {str(exc)[:120]}", "schemas": {}}
    rows = {}
    for name, schema in SCHEMAS.items():
        rng = random.Random(0)
        compiles, times, finished, failures = [], [], 0, []
        try:
            for _ in range(walks):
                compiled, steps_s, text = walk(engine, schema, vocabulary, rng, steps)
                compiles.append(compiled)
                times += steps_s
                if text is not None:
                    finished += 1
                    problem = check(text, schema)
                    failures += [problem] if problem else []
        except Exception as exc:  # noqa: BLE001 - an engine that fails a schema is the finding
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            continue
        ordered = sorted(times) or [0.0]
        rows[name] = {
            "compile_ms": 1000 * statistics.median(compiles),
            "token_us_mean": 1e6 * statistics.fmean(ordered),
            "token_us_p99": 1e6 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "steps": len(times),
            "walks": walks,
            "finished": finished,
            "invalid": len(failures),
            "first_invalid": failures[0] if failures else None,
        }
    return {"engine": kind.name, "vocabulary": "accepted", "schemas": rows}


TINY = {  # family: (preset, overrides), as tests/test_decode_speed.py builds them
    "gpt": ("gpt-cpu", ["model.d_model=64", "model.n_heads=2"]),
    "microstream": ("tiny", []),
    "h2q-transformer": ("h2q-transformer-cpu", ["model.d_model=128", "model.factor_size=16"]),
    "qrlm": ("qrlm-cpu", ["model.d_model=64", "model.factor_size=16"]),
    "hamiltonian-llm": (
        "hamiltonian-llm",
        ["model.d_model=64", "model.n_heads=2", "model.separator_token=10"],
    ),
}
TINY_SIZE = ["model.n_layers=2", "model.context=256"]


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


def generation_variants(tokens: int) -> dict[str, dict | None]:
    """No constraint; two schemas; a string as long as the budget (every token constrained)."""
    string = {"type": "string", "minLength": tokens, "maxLength": tokens}
    return {"none": None, "flat": SCHEMAS["flat"], "json": SCHEMAS["json"], "string": string}


def measure_generation(family: str, full: bool, tokens: int, repeats: int) -> dict:
    """One family: decoding tokens/s unconstrained and constrained, interleaved, medians."""
    preset, overrides = TINY[family]
    torch.manual_seed(0)
    model = build_model(resolve(preset, [] if full else overrides + TINY_SIZE).model).eval()
    variants = generation_variants(tokens)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, tuple[int, str]] = {}
    generation_rate(model, None, 8)  # warm-up
    for _ in range(repeats):
        for name, schema in variants.items():
            rate, count, reason = generation_rate(model, schema, tokens)
            rates[name].append(rate)
            counts[name] = (count, reason)
    row: dict = {"family": family, "preset": preset, "full_size": full}
    for name in variants:
        row[f"{name}_tokens_per_s"] = statistics.median(rates[name])
        row[f"{name}_tokens"], row[f"{name}_stop"] = counts[name]
    return row


def lscpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return hardware.cpu_model()
    names = [line.split(":", 1)[1].strip() for line in lines.splitlines() if "Model name" in line]
    return names[0] if names else hardware.cpu_model()


def print_engines(vocabulary: str, rows: list[dict]) -> None:
    print(f"\n{vocabulary}: compile ms | per token µs mean / p99 | walks finished, invalid")
    print("| engine | " + " | ".join(SCHEMAS) + " |")
    print("|---|" + "---|" * len(SCHEMAS))
    for row in rows:
        if not row["schemas"]:
            print(f"| {row['engine']} | {row['vocabulary']} |")
            continue
        cells = []
        for name in SCHEMAS:
            r = row["schemas"][name]
            if "error" in r:
                cells.append(f"error: {r['error'][:50]}")
                continue
            cells.append(
                f"{r['compile_ms']:.1f} ms; {r['token_us_mean']:.0f} / {r['token_us_p99']:.0f} µs; "
                f"{r['finished']}/{r['walks']}, {r['invalid']} invalid"
            )
        print(f"| {row['engine']} | " + " | ".join(cells) + " |")


def print_generation(rows: list[dict], tokens: int) -> None:
    print(
        f"\nGeneration (tiny models), up to {tokens} new tokens, seed 0, 1 thread: decoding "
        "tok/s after the first token (tokens, stop reason); cost = 1 − constrained / none"
    )
    print("| family | no constraint | schema flat | format json | string (all constrained) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        none = r["none_tokens_per_s"]
        cells = [f"{none:,.0f} ({r['none_tokens']}, {r['none_stop']})"]
        for n in ("flat", "json", "string"):
            rate = r[f"{n}_tokens_per_s"]
            cells.append(
                f"{rate:,.0f} ({r[f'{n}_tokens']}, {r[f'{n}_stop']}; {100 * (1 - rate / none):.0f}%)"
            )
        print(f"| {r['family']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--walks", type=int, default=20, help="random walks per schema")
    parser.add_argument("--steps", type=int, default=3000, help="step budget of one walk")
    parser.add_argument("--bpe", type=int, default=1024, help="BPE vocabulary size (0: skip)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="presets at full size, not tiny")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-grammar-engines.json")
    args = parser.parse_args()
    use_decoding_threads(1)
    vocabularies = {"bytes (256)": [bytes([i]) for i in range(256)]}
    if args.bpe:
        vocabularies[f"byte-level BPE ({args.bpe})"] = bpe_vocabulary(args.bpe)
    engines = {
        name: [measure_engine(kind, vocab, args.walks, args.steps) for kind in ENGINES]
        for name, vocab in vocabularies.items()
    }
    generation = [measure_generation(f, args.full, args.tokens, args.repeats) for f in TINY]
    machine = {**hardware.machine_info(), "lscpu_model": lscpu_model()}
    print(f"machine: {machine['lscpu_model']}, torch {torch.__version__}")
    versions = {m: _version(m) for m in ("llguidance", "outlines_core", "xgrammar")}
    print("engines:", ", ".join(f"{m} {v}" for m, v in versions.items()))
    for name, rows in engines.items():
        print_engines(name, rows)
    print_generation(generation, args.tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine,
        "versions": versions,
        "schemas": SCHEMAS,
        "walks": args.walks,
        "engines": engines,
        "generation": generation,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


def _version(module: str) -> str:
    from importlib.metadata import version  # only for the report

    return version(module.replace("_", "-"))


if __name__ == "__main__":
    main()
