"""Dockable panels around the view grid: study browser, study info, 3D controls."""
