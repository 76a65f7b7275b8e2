"""Ship a trained zfnet-cifar run: half-precision weights in the package, and its model card.

Usage (from the repository root, after the training command in docs/model-zfnet-cifar.md):

    python scripts/ship_zfnet.py runs/zfnet-cifar --data-dir ../shared/data

It converts the run's final weights to half precision (nothing else is changed), evaluates
*those* weights on the full CIFAR-10 test set (overall and per class), measures the evidence
numbers on the shipped 500-image sample, and writes ``src/deconvviz/assets/zfnet_cifar.pt`` and
``docs/model-zfnet-cifar.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run directory written by deconvviz train zfnet-cifar")
    ap.add_argument("--data-dir", type=Path, required=True, help="folder holding CIFAR-10")
    ap.add_argument("--command", default=None, help="the exact training command (for the card)")
    ap.add_argument("--note", default="", help="a sentence on the machine's load (for the card)")
    args = ap.parse_args()

    from deconvviz.analyses.evidence import class_selectivity, filter_structure
    from deconvviz.export.demo import ZF_LAYERS, load_sample
    from deconvviz.sources.checkpoint import load_run
    from deconvviz.sources.data import load_dataset
    from deconvviz.sources.pretrained import export_weights, load_pretrained, pretrained_path

    run = load_run(args.run)
    if not run.metrics.get("finished"):
        print(f"{args.run} has not finished training; finish it (--resume) first", file=sys.stderr)
        return 1
    test = load_dataset(args.data_dir, "cifar10", "test")
    asset = pretrained_path("zfnet-cifar")
    info = {
        "config": run.config,
        "metrics": {k: v for k, v in run.metrics.items()},
        "classes": list(test.classes),
    }
    export_weights(run.model, asset, info=info)  # weights first, then measured as shipped
    model, _ = load_pretrained()
    correct = torch.zeros(10)
    total = torch.zeros(10)
    with torch.no_grad():
        for start in range(0, len(test), 1000):
            idx = torch.arange(start, min(start + 1000, len(test)))
            x, y = test.batch(idx)
            pred = model(x).argmax(1)
            total += torch.bincount(y, minlength=10).float()
            correct += torch.bincount(y[pred == y], minlength=10).float()
    per_class = (correct / total).tolist()
    acc = float(correct.sum() / total.sum())
    sample = load_sample()
    sel = class_selectivity(model, sample, list(ZF_LAYERS), k=9)
    fs = filter_structure(model.conv1)
    info.update(
        test_accuracy=acc,
        per_class_accuracy=dict(zip(test.classes, per_class, strict=True)),
        selectivity=sel.to_dict(),
        filter_structure=fs.to_dict(),
    )
    export_weights(run.model, asset, info=info)
    card = _card(run, info, args.command, test.classes, asset, args.note)
    (ROOT / "docs" / "model-zfnet-cifar.md").write_text(card)
    print(f"shipped {asset} ({asset.stat().st_size / 1e6:.1f} MB): test accuracy {acc:.4f}")
    print(json.dumps(info["selectivity"]["selectivity"]), json.dumps(info["filter_structure"]))
    return 0


def _card(run, info, command, classes, asset, note) -> str:  # type: ignore[no-untyped-def]
    cfg, met = info["config"], info["metrics"]
    per = info["per_class_accuracy"]
    sel = info["selectivity"]
    fs = info["filter_structure"]
    hist = met.get("history", {}).get("test_acc", [])
    wall = float(met.get("wall_seconds", float("nan")))
    lines = [
        "# Model card: `zfnet-cifar`, the network `deconvviz demo` shows",
        "",
        "A Zeiler & Fergus-style network for CIFAR-10, trained by deconvviz's own "
        "`deconvviz train zfnet-cifar`, shipped as `deconvviz/assets/zfnet_cifar.pt` "
        f"({asset.stat().st_size / 1e6:.1f} MB, half precision; loaded with "
        "`weights_only=True` by `deconvviz.sources.pretrained.load_pretrained()`).",
        "",
        "## Architecture",
        "",
        "Five 3x3 convolutions (5x5 for conv1) of width 64-128-256-256-256, each followed by "
        "BatchNorm and ReLU; overlapping 3x3 max pooling with stride 2 (as in the paper) after "
        "conv1, conv2 and conv5 (32 -> 16 -> 8 -> 4 pixels); `fc6` (4096 -> 256) + ReLU + "
        "dropout 0.3 + `fc7` (256 -> 10). No residual connections. Inputs are pixels in "
        "[0, 1] (no mean/std normalisation). "
        f"{sum(p.numel() for p in run.model.parameters()):,} parameters. "
        "The deconvnet walks BatchNorm back as its eval-mode scaling; the demo projects the "
        "rectified feature maps `relu1`...`relu5`.",
        "",
        "## Data",
        "",
        "`../shared/data/cifar10/cifar10.npz`: the full CIFAR-10, 50,000 training and 10,000 "
        "test images. Caveat from that folder's README: only 4,000 training and 1,000 test "
        "images have exact pixels; the others were rebuilt from JPEG (quality 75) copies, a "
        "mean absolute difference of about 5.8 grey levels. So the accuracy below is on this "
        "copy of the test set, not on the official files.",
        "",
        "## Recipe",
        "",
        f"SGD, Nesterov momentum {cfg['momentum']}, batch {cfg['batch_size']}, peak learning "
        f"rate {cfg['lr']} on a one-cycle schedule (linear warm-up from lr/10 over 15% of the "
        f"steps, then linear decay to 0), weight decay {cfg['weight_decay']}, label smoothing "
        f"{cfg['label_smoothing']}, random crops of 4-pixel reflect-padded images and "
        f"horizontal flips, bfloat16 autocast, {cfg['epochs']} epochs "
        f"({met.get('iterations')} steps), seed {cfg['seed']}. The paper's filter "
        "renormalisation is available (`--renormalise 0.1`) but was not used: BatchNorm "
        "makes each filter's scale irrelevant to the output.",
        "",
        "To retrain (from the repository root; `runs/` is git-ignored):",
        "",
        "```bash",
        command
        or "deconvviz train zfnet-cifar --data-dir ../shared/data --out runs/zfnet-cifar "
        "--epochs 20 --eval-every 392 --seed 0",
        "python scripts/ship_zfnet.py runs/zfnet-cifar --data-dir ../shared/data",
        "```",
        "",
        "The second command converts the final weights to half precision (nothing else), "
        "measures the numbers on this page with the shipped weights, and writes this page.",
        "",
        "## Accuracy",
        "",
        f"**{100 * info['test_accuracy']:.2f}%** on the 10,000 test images with the shipped "
        "(half-precision) weights, evaluated in float32; the goal was 85%. The training run's "
        f"own last evaluation (bfloat16) read {100 * float(hist[-1][1]):.2f}%."
        if hist
        else "",
        "",
        "| class | accuracy |",
        "| --- | --- |",
        *[f"| {c} | {100 * per[c]:.1f}% |" for c in classes],
        "",
        "Test accuracy during training (step: accuracy): "
        + ", ".join(f"{int(i)}: {100 * float(a):.1f}%" for i, a in hist),
        "",
        "## Wall time and machine",
        "",
        f"{wall / 60:.1f} minutes of training wall time on {platform.processor() or 'a CPU'} "
        "with 2 cores (an Intel Xeon with AMX, which runs the bfloat16 convolutions), torch "
        f"{torch.__version__}, no GPU. {note}",
        "",
        "## Do the pictures mean something?",
        "",
        f"Class selectivity (mean fraction of a live unit's top-9 images, of the {sel['images']} "
        "shipped sample images, sharing the unit's most common class; chance about "
        f"{sel['chance']:.2f}):",
        "",
        "| layer | live units | selectivity |",
        "| --- | --- | --- |",
        *[f"| {n} | {sel['live_units'][n]} | {sel['selectivity'][n]:.3f} |" for n in sel["layers"]],
        "",
        f"First-layer filters: mean neighbour correlation {fs['trained']:.3f}, against "
        f"{fs['init']:.3f} at initialisation (mean of {fs['seeds']} initialisations).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
