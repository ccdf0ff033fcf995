"""photoid: photo-identification of individual whales, dolphins and belugas.

The library that the DVC stages in ``stages/`` call. See ``DESIGN.md`` (shared) and the README.
"""

__version__ = "0.1.0"
