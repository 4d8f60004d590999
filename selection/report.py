"""A report of a selection or a search, a title, a table and notes: as plain text for a terminal, and as
Markdown (a real table) for the `.md` artefact MLflow shows."""

from dataclasses import dataclass

import pandas as pd


def _four_places(value: float) -> str:
    return f"{value:.4f}"


@dataclass(frozen=True)
class Report:
    title: str
    table: pd.DataFrame
    notes: list[str]

    def text(self) -> str:
        return "\n".join([self.title, "", self.table.to_string(index=False, float_format=_four_places), "",
                          *self.notes])

    def markdown(self) -> str:
        return "\n".join([self.title, "", markdown_table(self.table), "", *(f"- {note}" for note in self.notes)]) + "\n"


def markdown_table(table: pd.DataFrame, float_format=_four_places) -> str:
    """`table` as a Markdown pipe table; floats through `float_format`, pipes in cells escaped."""
    def cell(value) -> str:
        text = float_format(value) if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(column) for column in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
