"""Choosing a head plan: sweep ratio x window for the cheapest plan within a tolerance of dense
(:mod:`.search`, costs in :mod:`.cost`), and compare head rankings (:mod:`.compare`)."""
