"""Stage 2, analyze: blob shapes (``shapes``) and weights / FLOPs per layer as the paper counts them (``cost``)."""
