"""Training: the crop datasets and augmentations, and the one loop every training stage shares."""
