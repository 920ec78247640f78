"""reports.tables: golden Markdown from fixture results, marks, "–", LaTeX and CSV, sweeps, the paper side-by-side."""

from __future__ import annotations

import csv
import io
import math
import shutil

import pandas as pd
import pytest
from report_helpers import AFTER, BASE, GOLDEN, scale_metric, trained_copy

from reports.load import load_results
from reports.paper_numbers import cells_from_paper
from reports.table_cells import CELL_COLUMNS, cells_from_results
from reports.table_specs import Column, TableSpec, table_specs
from reports.tables import build_table, comparison_with_paper


@pytest.fixture
def results():
    return load_results([BASE, AFTER])


@pytest.mark.parametrize("name", ["synth", "table2"])
def test_fixture_results_give_the_golden_markdown(results, name):
    """synth: AP@50 2/24 -> 4/24 = 8.3 -> 16.7 (PerPO bold, base underlined), parse failures 0.0 twice (a tie:
    both bold), no-image AP@50 has no direction (no marks), best-of-20 oracle 11/24 = 45.8 > 10/24 = 41.7 (base
    bold). table2: Fox edit distance 0.92 for both (tie), and "–" for the four columns these runs lack."""
    spec = table_specs()[name]
    cells, _ = cells_from_results(results, spec)
    assert build_table(spec, cells).to_markdown() == (GOLDEN / f"fixture_{name}.md").read_text()


def test_columns_a_run_lacks_are_reported(results):
    _, problems = cells_from_results(results, table_specs()["table2"])
    missing = {(p.run, p.task, p.metric) for p in problems if p.kind == "missing_metric"}
    assert ("base200 + PerPO", "pope", "pope_f1_score") in missing
    assert ("base200", "mmhal_bench", "hallucination_rate") in missing and len(missing) == 8
    # runs with none of a table's tasks are left out of it (they ran other benchmarks)
    cells, problems = cells_from_results(results, table_specs()["table1"])
    assert cells.empty and problems == []


def test_optional_columns_show_only_where_some_run_has_them(tmp_path):
    """The synth table's no-image and blank-image columns are optional: a column no run has is left out and not
    reported missing; beside a run that has it, a run without it gets "–" (still not a missing metric)."""
    blank = tmp_path / "blank"
    shutil.copytree(AFTER, blank)
    for path in [blank / "results.json", *(blank / "samples").glob("*.jsonl")]:
        path.write_text(path.read_text().replace("perpo_synth_test_noimg", "perpo_synth_test_blankimg"))
    (blank / "samples" / "perpo_synth_test_noimg.jsonl").rename(blank / "samples" / "perpo_synth_test_blankimg.jsonl")
    spec = table_specs()["synth"]
    assert {c.key for c in spec.columns if c.optional} == {"ap50_noimg", "ap50_blankimg"}

    cells, problems = cells_from_results(load_results([BASE]), spec)
    header = build_table(spec, cells).to_markdown().splitlines()[0]
    assert "| no image AP@50 |" in header and "blank image" not in header and problems == []

    cells, problems = cells_from_results(load_results([blank]), spec)
    header = build_table(spec, cells).to_markdown().splitlines()[0]
    assert "| blank image AP@50 |" in header and "no image" not in header and problems == []

    cells, problems = cells_from_results(load_results([BASE, blank]), spec)
    lines = build_table(spec, cells).to_markdown().splitlines()
    assert "| original AP@50 | no image AP@50 | blank image AP@50 | best-of-N first |" in lines[0]
    assert "| 0.0 | – |" in lines[2] and "| – | 0.0 |" in lines[3] and problems == []


def test_latex_has_grouped_headers_marks_and_dashes(results):
    spec = table_specs()["table2"]
    latex = build_table(spec, cells_from_results(results, spec)[0]).to_latex()
    assert latex.startswith("\\begin{tabular}{lrrrrrrrrrr}\n\\toprule\n")
    assert "\\multicolumn{2}{c}{MMHalBench}" in latex and "\\cmidrule(lr){9-10}" in latex
    assert "Edit Dist $\\downarrow$" in latex and "LLaVA$^W$" in latex
    assert "base200 & \\textbf{0.92} & \\textbf{0.00}" in latex and latex.count("--") == 8
    spec = table_specs()["synth"]
    latex = build_table(spec, cells_from_results(results, spec)[0]).to_latex()
    assert "+ PerPO & \\textbf{16.7} & \\textbf{23.5}" in latex and "\\underline{8.3}" in latex
    assert "\\multicolumn{3}{c}{padded}" in latex and "\\multicolumn{2}{c}{best-of-N}" in latex


def test_csv_holds_plain_values_and_empty_missing_fields(results):
    spec = table_specs()["table2"]
    rows = list(csv.reader(io.StringIO(build_table(spec, cells_from_results(results, spec)[0]).to_csv())))
    assert rows[0][:3] == ["Methods", "Edit Dist ↓", "F1 ↑"] and len(rows) == 3
    assert rows[2] == ["+ PerPO", "0.92", "0.00", "0.00", "0.00", "0.00", "0.00", "", "", "", ""]


def _spec(better: str, highlight: str = "block") -> TableSpec:
    column = Column(key="x", label="x", sources=(("t", "m", 1.0),), digits=2, better=better)
    return TableSpec("t", "t", "", "methods", highlight, (column,))


def _cells(values: dict[str, float], block: str = "M") -> pd.DataFrame:
    rows = [{"block": block, "method": method, "row": (), "label": method, "column": "x", "value": value,
             "run": f"{block}-{method}"} for method, value in values.items()]  # fmt: skip
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def _marks(table) -> dict[str, str]:
    return {row[0].text: row[1].mark for row in table.rows}


def test_marks_follow_the_direction_ties_and_displayed_rounding():
    values = {"base": 0.67, "sft": 0.661, "dpo": 0.6149, "perpo": 0.58}
    # lower is better: 0.58 bold, 0.61 underlined; 0.661 shows as 0.66 and is not a tie with 0.67
    assert _marks(build_table(_spec("lower"), _cells(values))) == {
        "base": "", "sft": "", "dpo": "underline", "perpo": "bold"}  # fmt: skip
    # higher is better, and 0.6149 vs 0.61 tie as displayed
    tied = {"base": 0.61, "sft": 0.6149, "dpo": 0.5, "perpo": 0.7}
    assert _marks(build_table(_spec("higher"), _cells(tied))) == {
        "base": "underline", "sft": "underline", "dpo": "", "perpo": "bold"}  # fmt: skip
    # no direction, no highlight, or a single value: no marks
    assert set(_marks(build_table(_spec("none"), _cells(values))).values()) == {""}
    assert set(_marks(build_table(_spec("lower", "none"), _cells(values))).values()) == {""}
    assert _marks(build_table(_spec("lower"), _cells({"perpo": 0.5}))) == {"perpo": ""}
    # a missing value shows as "–" and takes no part in the ranking
    table = build_table(_spec("lower"), _cells({"base": 0.5, "perpo": math.nan, "dpo": 0.6}))
    assert [(r[0].text, r[1].text, r[1].mark) for r in table.rows] == [
        ("base", "0.50", "bold"), ("dpo", "0.60", "underline"), ("perpo", "–", "")]  # fmt: skip


def test_marks_are_per_block_and_rows_follow_the_method_order():
    cells = pd.concat([_cells({"perpo": 0.9, "base": 0.1, "sft": 0.5}, "A"), _cells({"dpo": 0.2, "base": 0.3}, "B")])
    table = build_table(_spec("higher"), cells)
    assert [(b, r[0].text, r[1].mark) for b, r in zip(table.blocks, table.rows, strict=True)] == [
        ("A", "base", ""), ("A", "sft", "underline"), ("A", "perpo", "bold"),
        ("B", "base", "bold"), ("B", "dpo", "underline")]  # fmt: skip
    assert build_table(_spec("higher", "all"), cells).rows[3][1].mark == ""  # 0.3: third over all rows


def test_a_sweep_over_n_from_training_records(tmp_path):
    """Table 3's layout from runs: N from each adapter's train_config.json, DPO | PerPO side by side."""
    runs = []
    for name, loss, n, factor in (("p2", "perpo", 2, 0.5), ("p8", "perpo", 8, 1.0), ("d8", "dpo", 8, 0.25)):
        run = trained_copy(tmp_path, name, loss=loss, n=n)
        scale_metric(run, "perpo_synth_test", "ap50", factor)
        runs.append(run)
    spec = TableSpec(
        "sweep", "s", "", "sweep", "all",
        (Column("ap50", "AP@50", (("perpo_synth_test", "ap50", 100.0),), digits=1),), (("n", "N"),), ("dpo", "perpo"),
    )  # fmt: skip
    cells, problems = cells_from_results(load_results(runs), spec)
    assert build_table(spec, cells).to_markdown() == (
        "| N | Methods | AP@50 | Methods | AP@50 |\n| :--- | :--- | ---: | :--- | ---: |\n"
        "| 2 | DPO | – | PerPO | <u>8.3</u> |\n| 8 | DPO | 4.2 | PerPO | **16.7** |\n"
    )
    assert problems == []


def test_runs_beside_the_paper_with_the_difference():
    spec = table_specs()["table1"]
    ours = _cells({"perpo": 65.0})
    ours["column"], ours["label"], ours["run"] = "refcoco_val", "+ PerPO", "my PerPO"
    side = comparison_with_paper(spec, ours, cells_from_paper(spec))
    lines = side.to_markdown().splitlines()
    assert lines[0].startswith("|  | Methods | RefCOCO val | RefCOCO testA |")
    assert lines[2].startswith("| ours | my PerPO | 65.0 | – |")
    assert lines[3].startswith("| paper | + PerPO | 63.8 | 70.6 | 54.4 |")
    assert lines[4].startswith("| Δ |  | +1.2 | – |") and len(lines) == 5
    latex = side.to_latex()
    assert "ours & my PerPO & 65.0 & --" in latex and "$\\Delta$ &  & +1.2" in latex
    assert "\\cmidrule(lr){3-5}" in latex  # the RefCOCO group starts after the two label columns
    # another paper block, and no match at all
    next_block = comparison_with_paper(spec, ours, cells_from_paper(spec), "LLaVA-NEXT-7B")
    assert "| paper | + PerPO | 86.7 |" in next_block.to_markdown()
    ours["method"] = "lipo"
    assert comparison_with_paper(spec, ours, cells_from_paper(spec)) is None
