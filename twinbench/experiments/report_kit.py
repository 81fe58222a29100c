"""What every report is made of: framework colours and names, the machine it ran on, PNG plots,
tables rendered as Markdown and as one self-contained HTML page, and files that appear whole."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# PyTorch's red; TensorFlow's own orange is too near it to tell twenty thin lines apart.
COLORS = {"torch": "#ee4c2c", "tf": "#1f6fb4", "jax": "#2a9d4b"}
# Arms whose framework an earlier arm already has (an A/A run's second, a third arm that repeats
# one), in turn: colours of their own, none of a framework's.
REPEATED_ARM_COLORS = ("#5e3c99", "#b8860b")
SECOND_ARM_COLOR = REPEATED_ARM_COLORS[0]
LABELS = {"torch": "PyTorch", "tf": "TensorFlow", "jax": "JAX"}

# A table of a report: its heading, its column headers and its rows of cells.
Section = tuple[str, list[str], list[list[str]]]


@dataclass(frozen=True)
class Made:
    """When and by which command a report was made: its first line."""

    created_at: str
    command: str


def made(results: dict) -> Made:
    """The first line of a report whose results record `created_at` and `command`."""
    return Made(results["created_at"], results["command"])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count() or 0,
    }


def png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def render_markdown(
    title: str,
    made: Made,
    sections: Sequence[Section],
    images: dict[str, tuple[str, bytes]],
    notes: Sequence[str] = (),
) -> str:
    """A report as Markdown: its tables, its notes (paragraphs, or "- " bullets), then its plots
    (PNG files beside it, by file name)."""
    lines = [f"# twinbench: {title}", "", f"Made {made.created_at} by `{made.command}`.", ""]
    for heading, headers, rows in sections:
        lines += [
            f"## {heading}",
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "---|" * len(headers),
        ]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        lines.append("")
    for note in notes:
        lines += [note, ""]
    for name, (image_title, _) in images.items():
        lines += [f"## {image_title}", "", f"![{image_title}]({name})", ""]
    return "\n".join(lines)


def render_html(
    title: str,
    made: Made,
    sections: Sequence[Section],
    images: dict[str, tuple[str, bytes]],
    notes: Sequence[str] = (),
) -> str:
    """One self-contained page: the tables, with the plots embedded after the verdict (or at the
    end, for a report without one), then the notes."""
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>twinbench: {esc(title)}</title>",
        "<style>body{font:14px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}"
        "th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4;padding:1px 4px}</style>",
        "</head><body>",
        f"<h1>twinbench: {esc(title)}</h1>",
        f"<p>Made {esc(made.created_at)} by <code>{esc(made.command)}</code>.</p>",
    ]
    plots = [
        f"<h2>{esc(image_title)}</h2>"
        f"<img alt='{esc(image_title)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        for image_title, data in images.values()
    ]
    for heading, headers, rows in sections:
        parts.append(
            f"<h2>{esc(heading)}</h2><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in headers)
            + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
        if heading.startswith("Verdict"):
            parts += plots
            plots = []
    parts += plots
    bullets = [note[2:] for note in notes if note.startswith("- ")]
    parts += [f"<p>{esc(note)}</p>" for note in notes if not note.startswith("- ")]
    if bullets:
        parts.append("<ul>" + "".join(f"<li>{esc(b)}</li>" for b in bullets) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_files(directory: Path, files: dict[str, bytes]) -> list[Path]:
    """Writes every file of a report; each appears whole (written aside, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(directory / name)
        written.append(directory / name)
    return written


def table_report(
    title: str, results: dict, section: Section, notes: Sequence[str]
) -> tuple[str, str]:
    """A bench's report, one table and its notes, as Markdown and as HTML; `results` records when
    it was made (`created`), by which command (`options.command`) and on what (`environment`)."""
    env = results["environment"]
    made = Made(results["created"], results["options"].get("command", ""))
    notes = [f"Machine: {env['cpu']}, {env['cpu_count']} CPUs.", *notes]
    return (
        render_markdown(title, made, [section], {}, notes),
        render_html(title, made, [section], {}, notes),
    )


def write_table_report(
    directory: Path, stem: str, results: dict, pages: tuple[str, str]
) -> list[Path]:
    """<stem>.json (the results), <stem>.md and <stem>.html, each appearing whole."""
    markdown, page = pages
    return write_files(
        directory,
        {
            f"{stem}.json": json.dumps(results, indent=1).encode(),
            f"{stem}.md": markdown.encode(),
            f"{stem}.html": page.encode(),
        },
    )
