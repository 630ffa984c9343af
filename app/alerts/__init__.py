"""Trend alerts: per stream, a change in net revenue, margin or ROI against its own baseline.

detect.py is the method (pure); evaluate.py reads the daily figures through the metrics layer,
stores new alerts once (store.py) and sends them to the outgoing webhook (notify.py).
See docs/alerts.md.
"""
