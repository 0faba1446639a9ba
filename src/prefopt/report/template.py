"""The report's page skeleton and its inline stylesheet (no external CSS, JS or fonts)."""

from __future__ import annotations

from html import escape

CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --card:#ffffff;
        --blue:#2563eb; --green:#059669; --red:#dc2626; --amber:#d97706; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 64px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
nav { margin: 14px 0 4px; display:flex; flex-wrap:wrap; gap:8px; }
nav a { font-size:13px; color:var(--blue); text-decoration:none; padding:3px 10px;
        border:1px solid var(--line); border-radius:999px; background:var(--card); }
section { background:var(--card); border:1px solid var(--line); border-radius:10px;
          padding: 18px 22px; margin-top: 20px; }
section h2 { font-size: 19px; margin: 0 0 10px; }
section h3 { font-size: 15px; margin: 18px 0 8px; }
.note { color: var(--muted); font-size: 13px; }
.warn { background:#fffbeb; border:1px solid #fde68a; color:#92400e; border-radius:8px;
        padding:8px 12px; margin:8px 0; font-size:14px; }
.cards { display:grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:10px; padding:12px 14px; background:#fcfcfd; }
.card .k { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em; }
.card .v { font-size:26px; font-weight:650; }
.card .ci { font-size:12px; color:var(--muted); }
.good { color: var(--green); } .bad { color: var(--red); }
table { border-collapse: collapse; width:100%; font-size:14px; margin: 6px 0; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f3f4f6; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
td .ci { color: var(--muted); font-size: 12px; }
.plots { display:grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap:14px; }
.plots.wide { grid-template-columns: minmax(0, 860px); }
figure { margin:0; }
figure img { width:100%; height:auto; border:1px solid var(--line); border-radius:8px; background:#fff; }
figcaption { font-size:12px; color:var(--muted); margin-top:2px; }
.sample { border-top:1px solid var(--line); padding-top:12px; margin-top:12px; }
.sample details summary { cursor:pointer; color:var(--muted); font-size:13px; }
.post { white-space:pre-wrap; font-size:13px; background:#f9fafb; border:1px solid var(--line);
        border-radius:6px; padding:8px 10px; max-height: 260px; overflow:auto; }
.cols { display:grid; grid-template-columns: repeat(auto-fit, minmax(240px, 1fr)); gap:10px; margin-top:8px; }
.col { border:1px solid var(--line); border-radius:8px; padding:8px 10px; }
.col h4 { margin:0 0 4px; font-size:13px; text-transform:uppercase; letter-spacing:.03em; color:var(--muted); }
.col p { margin:0 0 6px; white-space:pre-wrap; }
.badge { display:inline-block; font-size:11px; padding:1px 7px; border-radius:999px; background:#eef2ff;
         color:#3730a3; margin: 2px 4px 0 0; font-variant-numeric: tabular-nums; }
code { font-size: 13px; background:#f3f4f6; padding:1px 4px; border-radius:4px; }
"""


def page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str) -> str:
    """A whole HTML document. ``title``/``subtitle``/nav labels are escaped here; ``body`` is trusted HTML
    (every part of it escapes its own text)."""
    links = "".join(f'<a href="#{escape(anchor)}">{escape(label)}</a>' for anchor, label in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main><header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p>"
        f"<nav>{links}</nav></header>\n{body}\n</main></body></html>\n"
    )
