"""photoid: photo-identification of individual whales, dolphins and belugas.

The library that the DVC stages in ``stages/`` call; the README's Architecture section draws its layers.
"""

__version__ = "0.1.0"
