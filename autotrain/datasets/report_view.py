"""The CLI's summary of a validation report, kept apart so that phase 1 never imports rich."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from autotrain.datasets.diskspace import human_size
from autotrain.datasets.validate import ValidationReport, name_list

__all__ = ["report_table"]


def report_table(report: ValidationReport, max_problems: int = 50) -> Table:
    """A summary for the CLI: counts first, then each problem with the file it names.

    File names go in as plain Text, so brackets in them are never read as rich markup.
    """
    status = Text("ok", style="green") if report.ok else Text("failed", style="red")
    title = Text.assemble(f"Dataset {report.name} ({report.profile}): ", status)
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("detail", overflow="fold")

    def row(label: str, detail: str, style: str = "") -> None:
        table.add_row(Text(label, style=style), Text(detail))

    row("Path", str(report.dataset_path))
    row("Images", f"{len(report.images)} usable of {report.images_found} found")
    for subset in report.subsets:
        repeats = "profile default" if subset.repeats is None else str(subset.repeats)
        row("  subset", f"{subset.relpath}: {subset.image_count} images, repeats {repeats}")
    row(
        "Captions",
        f"{len(report.captions)} ({len(report.missing_captions)} missing, "
        f"{len(report.empty_captions)} empty)",
    )
    row("Size", human_size(report.total_bytes))
    if report.junk_skipped:
        row("Junk skipped", name_list(report.junk_skipped))
    if report.ignored_files:
        row("Ignored", name_list(report.ignored_files))
    for reason in report.fatal:
        row("FATAL", reason, "red")
    for problem in report.problems[:max_problems]:
        label, style = ("excluded", "red") if problem.level == "error" else ("warning", "yellow")
        row(label, f"{problem.path}: {problem.reason}", style)
    if len(report.problems) > max_problems:
        row("", f"... and {len(report.problems) - max_problems} more problems")
    return table
