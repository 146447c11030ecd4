"""Training-side code: synthetic phantoms, datasets, training loops and the demo model pack (never imports app/)."""
