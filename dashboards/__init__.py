"""The Dash app: pages and figures, nothing but presentation."""
