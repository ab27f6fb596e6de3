"""Image folders with captions: what users hand b4m."""

from b4m.data.folders import ImageSet, load_images, read_image_folder

__all__ = ["ImageSet", "load_images", "read_image_folder"]
