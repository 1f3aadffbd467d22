"""Playing a trained world model: a stream per player over a held-out episode, served to a local web page."""
