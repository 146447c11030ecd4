"""Thin Qt widgets that host the render pipelines and turn mouse and keys into ViewerState changes."""
