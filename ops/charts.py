"""The benchmarks' HTML charts (ops/bench_stream.py, ops/bench_bi.py, ops/bench_nightly.py): a plotly figure
written as one self-contained file."""

from __future__ import annotations

from pathlib import Path

from core.settings import REPO_ROOT


def write_html(fig, path: Path) -> Path:
    """Write a plotly figure as a self-contained HTML file (a relative ``path`` is under the repository root);
    returns the absolute path."""
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)
    return path
