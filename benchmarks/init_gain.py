"""Energy (mean ‖h‖ before the head) and cross-entropy at initialisation, source vs unit HamLinear init.

python benchmarks/init_gain.py [--preset microstream-cpu]

fp32 forward passes on 8 windows of the embedded corpus; the table and the JSON name the
machine (the figures do not depend on it beyond float rounding).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from h2q_kernels.hamiltonian import materialise_weight

from h2q_tui.config import resolve
from h2q_tui.data.sources import default_corpus_bytes
from h2q_tui.models import build_model
from h2q_tui.system import hardware


@torch.no_grad()
def measure(preset: str, init: str, final_norm: bool, idx: torch.Tensor) -> dict:
    torch.manual_seed(0)
    config = resolve(
        preset, [f'model.ham_init="{init}"', f"model.final_norm={str(final_norm).lower()}"]
    )
    model = build_model(config.model).eval()
    _, loss = model(idx[:, :-1], idx[:, 1:])
    gains = [  # ‖W‖_F / sqrt(D): 1.0 for an orthogonal map
        materialise_weight(layer.structure_bank.block_matrices(layer.rank), layer.factors())
        .norm()
        .item()
        / layer.bias.numel() ** 0.5
        for layer in model.ham_layers()
    ]
    return {
        "ham_init": init,
        "final_norm": final_norm,
        "energy": model.energy.item(),
        "ce_nats": loss.item(),
        "mean_w_gain": sum(gains) / len(gains),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="microstream-cpu")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-init-gain.json")
    args = parser.parse_args()
    context = resolve(args.preset).model.context
    data = torch.frombuffer(
        bytearray(default_corpus_bytes()[: 8 * (context + 1)]), dtype=torch.uint8
    )
    idx = data.long().view(8, context + 1)  # 8 windows of the embedded corpus
    rows = [
        measure(args.preset, init, norm, idx)
        for init in ("source", "unit")
        for norm in (False, True)
    ]
    print(f"machine: {hardware.machine_line()}")
    print(f"{args.preset} at init, fp32 (ln 256 = 5.545 nats):")
    print("| ham_init | final_norm | mean ‖W‖_F/√D | energy | CE nats |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['ham_init']} | {r['final_norm']} | {r['mean_w_gain']:.2f} | {r['energy']:.1f} | {r['ce_nats']:.3f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"preset": args.preset, "machine": hardware.machine_info(), "rows": rows}
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
