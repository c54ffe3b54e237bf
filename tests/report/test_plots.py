"""cramming_simple/report/plots.py: the figures: images, TrueType fonts, time axes, one panel per kind of metric."""

from __future__ import annotations

import re

from helpers.runs import make_run


def test_plots_are_images(paper_like):
    out, stdout, _ = paper_like
    for stem in ("loss_vs_hours", "loss_vs_steps", "schedule", "glue_tasks"):
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, stem
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF"), stem
        assert f"{stem}.png" in (out / "index.md").read_text()
    assert str(out / "table1.tex") in stdout and str(out / "index.md") in stdout


def test_pdfs_embed_truetype_fonts_not_type3(paper_like):
    """Venues reject Type 3 fonts: every font dictionary of every PDF is TrueType (Type 42), its program embedded."""
    out, _, _ = paper_like
    pdfs = sorted(out.glob("*.pdf"))
    assert len(pdfs) >= 5
    for pdf in pdfs:
        data = pdf.read_bytes()
        subtypes = set(re.findall(rb"/Subtype\s*/(Type3|TrueType|Type1|Type0|CIDFontType2|CIDFontType0)", data))
        assert subtypes and subtypes <= {b"TrueType", b"Type0", b"CIDFontType2"}, (pdf.name, subtypes)
        assert b"/FontFile2" in data, pdf.name  # the TrueType program itself travels with the file


def overlapping_ticks(fig) -> list[tuple[str, str]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    clashes = []
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        clashes += [
            (labels[i].get_text(), labels[i + 1].get_text())
            for i in range(len(boxes) - 1)
            if boxes[i].x1 > boxes[i + 1].x0
        ]
    return clashes


def test_time_axes_read_in_minutes_below_an_hour_and_in_hours_above(tmp_path):
    from cramming_simple.report import plots
    from cramming_simple.report.load import load_runs

    loaded = load_runs([make_run(tmp_path, "preln-smoke", "preln", glue=False)])  # 39 minutes of metrics
    for figure in (
        plots.loss_figure(loaded.runs, loaded.metrics, "hours"),
        plots.schedule_figure(loaded.runs, loaded.metrics),
    ):
        ax = figure.axes[-1]
        assert ax.get_xlabel() == "wall-clock training time (minutes)"
        assert 30 <= ax.get_xlim()[1] <= 45 and not overlapping_ticks(figure)
    day = loaded.metrics.assign(elapsed_s=loaded.metrics.elapsed_s * 37)  # the same curve over 24 hours
    figure = plots.loss_figure(loaded.runs, day, "hours")
    assert figure.axes[0].get_xlabel() == "wall-clock training time (hours)"
    assert 20 <= figure.axes[0].get_xlim()[1] <= 26 and len(figure.axes[0].get_xticks()) <= 8
    assert not overlapping_ticks(figure)
    steps = plots.loss_figure(
        loaded.runs, loaded.metrics.assign(microbatch_steps=loaded.metrics.microbatch_steps * 3000), "steps"
    )
    assert not overlapping_ticks(steps)


def test_glue_figure_has_one_labelled_panel_per_kind_of_metric(tmp_path):
    from cramming_simple.reference import load_reference, published_rows
    from cramming_simple.report import plots
    from cramming_simple.report.load import load_runs

    loaded = load_runs([make_run(tmp_path, "preln-24h", "preln"), make_run(tmp_path, "sas-24h", "sas")])
    figure = plots.glue_figure(loaded.runs, loaded.glue, published_rows(load_reference("he2023")[1]))
    panels = {ax.get_ylabel(): [t.get_text() for t in ax.get_xticklabels()] for ax in figure.axes}
    assert panels == {
        "accuracy (%)": ["MNLI-m", "MNLI-mm", "SST-2", "RTE", "QNLI"],
        "Pearson r (x100)": ["STS-B"],
        "F1 (%)": ["QQP", "MRPC"],
        "Matthews corr. (x100)": ["CoLA"],
    }
    assert not overlapping_ticks(figure)
