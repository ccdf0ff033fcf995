"""Reading data sets into photoid's canonical tables (see :mod:`photoid.data.schema`)."""
