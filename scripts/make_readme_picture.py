"""Draw README.md's picture from the shipped network: the paper's Fig. 2 for relu1 and relu5.

Usage: python scripts/make_readme_picture.py   (writes docs/images/zfnet_relu1.png and
docs/images/zfnet_relu5.png from the shipped CIFAR-10 sample; about half a minute on a CPU).
"""

from __future__ import annotations

from pathlib import Path

from deconvviz.analyses.reconstruct import reconstruct_dataset
from deconvviz.base._io import save_figure
from deconvviz.export.demo import load_sample
from deconvviz.render.reconstruct import top_projections_figure
from deconvviz.sources.pretrained import load_pretrained

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> None:
    model, _ = load_pretrained()
    sample = load_sample()
    for layer in ("relu1", "relu5"):
        rec = reconstruct_dataset(model, sample, [layer], k=9, channels=range(8), progress=False)
        fig = top_projections_figure(rec[layer], ncols=4)
        print(save_figure(OUT / f"zfnet_{layer}.png", fig))


if __name__ == "__main__":
    main()
