import pandas as pd

from selection.report import Report, markdown_table


def test_the_markdown_report_is_a_pipe_table_with_notes_as_a_list():
    table = pd.DataFrame({"candidate": ["knn/a|b", "knn/c"], "synthetic_auroc": [0.91234, 0.5], "control": ["", "control"]})
    markdown = Report("Task t: 2 candidates", table, ["pick: knn/c"]).markdown().splitlines()
    assert markdown[:6] == ["Task t: 2 candidates", "",
                            "| candidate | synthetic_auroc | control |", "|---|---|---|",
                            "| knn/a\\|b | 0.9123 |  |", "| knn/c | 0.5000 | control |"]
    assert markdown[-1] == "- pick: knn/c"


def test_the_text_report_is_fixed_width_for_a_terminal():
    table = pd.DataFrame({"candidate": ["knn/a", "knn/long-name"], "synthetic_auroc": [0.9, 0.5]})
    lines = Report("title", table, ["note"]).text().splitlines()
    assert lines[0] == "title" and lines[-1] == "note"
    assert len({len(line) for line in lines[2:5]}) == 1  # header and rows aligned


def test_markdown_table_formats_floats_with_the_given_format():
    assert markdown_table(pd.DataFrame({"x": [0.5]}), lambda v: f"{v:.1f}").splitlines()[-1] == "| 0.5 |"
