"""CT cohorts to a training-ready HDF5 cache: readers, HU calibration, orientation, resampling."""
