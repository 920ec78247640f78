"""Paper-style tables, figures and before/after comparisons from lmms-eval result folders.

- `reports.load`: result folders (a `perpo eval` output or a raw lmms-eval `--output_path`) → one tidy DataFrame,
  with metadata read from the files' contents and a list of problems (unknown, missing or non-numeric metrics).
- `reports.tables`: the paper's table layouts (`tables.yaml`), best bold / second underlined, Markdown, LaTeX, CSV;
  the paper's own numbers (`paper_numbers.csv`) through the same builder, and a side-by-side with the difference.
- `reports.figures`: best-of-N curve, with/without-image bars, N / γ / margin sweeps (matplotlib, Agg, PNG).
- `reports.compare`: two runs → every shared metric with its change, per-sample wins and losses, a gallery.
- `reports.report`: a report config → one folder with tables, figures, the comparison and `index.md`.

Command line: `python -m reports {report,compare,tables}` or `perpo report` / `perpo compare`.
"""

from reports.load import Problem, ResultSet, Run, RunSpec, load_results

__all__ = ["Problem", "ResultSet", "Run", "RunSpec", "load_results"]
