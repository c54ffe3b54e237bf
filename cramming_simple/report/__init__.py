"""The report stage: run folders -> Tables 1-3 (Markdown, LaTeX, CSV) with intervals, figures and index.md.
Takes run folders (`train`'s summaries, `glue`'s results) and the published numbers; gives files under `reports/`.
"""
