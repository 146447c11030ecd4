"""VTK pipelines for the viewer, Qt-free so they can be tested on an offscreen render window."""
