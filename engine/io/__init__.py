"""Opening studies: find series (folders, zips, DICOMDIR, single files) and read them as HU Volumes."""

from engine.io.discover import SeriesInfo, discover, open_volume, rescale_from_metadata_csv

__all__ = ["SeriesInfo", "discover", "open_volume", "rescale_from_metadata_csv"]
