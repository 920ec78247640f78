"""Paper-style tables, figures and before/after comparisons from lmms-eval result folders.

- `reports.load`: result folders (a `perpo eval` output or a raw lmms-eval `--output_path`) → one tidy DataFrame,
  with a list of problems (unknown, missing or non-numeric metrics); `reports.result_files` finds and reads the
  results, samples and metadata files (metadata from the files' contents).
- `reports.tables`: the paper's table layouts, best bold / second underlined, and the side-by-side with the paper;
  `reports.table_specs` (`tables.yaml`), `reports.table_cells` (cells from runs), `reports.paper_numbers` (the
  paper's own numbers, `paper_numbers.csv`, through the same builder), `reports.table_render` (Markdown, LaTeX, CSV).
- `reports.figures`: best-of-N curve, with/without-image bars, N / γ / margin sweeps (matplotlib, Agg, PNG).
- `reports.compare`: two runs → every shared metric with its change, per-sample wins and losses; `reports.gallery`
  draws the most-changed answers, `reports.comparison_folder` writes the comparison folder.
- `reports.report`: a report config → one folder with tables, figures, the comparison and `index.md`.

Command line: `python -m reports {report,compare,tables}` or `perpo report` / `perpo compare`.
"""

from reports.load import Problem, ResultSet, Run, RunSpec, load_results

__all__ = ["Problem", "ResultSet", "Run", "RunSpec", "load_results"]
