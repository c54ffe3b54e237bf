"""The report stage: run folders -> Tables 1 and 2 (Markdown, LaTeX, CSV), figures and index.md."""
