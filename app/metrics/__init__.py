"""The metrics layer: the one source of every figure (dashboard, JSON API, CSV exports).

`filters` reads what a user asks for, `sources` says where the base sums come from (hourly
rollups, or the raw tables where rollups cannot answer exactly), `figures` derives margin,
margin % and ROI from base figures, and `queries` puts them together.
"""
