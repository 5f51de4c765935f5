"""How a plan is explained: as text tables (text.py), a roofline plot (plot.py) and one HTML page
(html.py); `hetcc explain` and the bundle's report use them."""
