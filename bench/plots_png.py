"""The pipeline's plots as PNG files, rendered offline from the specs ``dvc plots show`` makes (so
they look as the HTML page shows them), e.g. for the README.

    pip install vl-convert-python            # the renderer (Vega-Lite to PNG, no browser, no network)
    python bench/plots_png.py --out docs --plots cv-map5-by-threshold,top-score-known-and-new

Prints each plot written with its size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer


def main(
    out: Path = typer.Option(Path("docs"), help="Folder of the PNG files (<plot id>.png)."),
    plots: str = typer.Option("", help="Plot ids (dvc.yaml's plots), comma-separated; '' for every one."),
    scale: float = typer.Option(1.5, help="Pixels per Vega pixel."),
):
    try:
        import vl_convert as vlc
    except ImportError:
        sys.exit("needs vl-convert-python: pip install vl-convert-python")
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], capture_output=True, text=True)
    specs = json.loads(shown.stdout)["data"] if shown.stdout.strip() else {}
    wanted = {p for p in plots.split(",") if p}
    out.mkdir(parents=True, exist_ok=True)
    for plot_id, entries in specs.items():
        if wanted and plot_id not in wanted:
            continue
        for entry in entries:
            if entry.get("type") != "vega":
                continue
            png = vlc.vegalite_to_png(entry["content"], scale=scale)
            path = out / f"{plot_id.replace('/', '_')}.png"
            path.write_bytes(png)
            print(f"{path}: {len(png) / 1e3:.0f} kB")


if __name__ == "__main__":
    typer.run(main)
