"""`unfreeze report DIR`: what a sweep (or suggest) folder found, as a table, charts and one HTML page.

    table.py    the results table in the seed's layout (md, csv, json) and the command itself
    links.py    per run: its predictions file, model folder and tracker run
    charts.py   the frontier of the main metric against cost, loss curves (SVG for the page, PNG for --plot)
    html.py     one self-contained HTML page
    suggest.py  a suggest folder: its ranked candidates and rounds
"""
