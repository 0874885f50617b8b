"""Rendering: text/Markdown/CSV/JSON tables (``tables``), ``report.md`` (``markdown``), PNG figures (``plots``), progress bars."""
