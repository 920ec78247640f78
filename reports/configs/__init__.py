"""Example report and compare configs (`perpo report reports/configs/report_synth.yaml`), shipped with the package."""
